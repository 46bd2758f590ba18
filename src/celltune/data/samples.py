"""The unit passed between dataset discovery, loaders and evaluation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from celltune.errors import ConfigError
from celltune.io import write_text


@dataclass(frozen=True)
class Sample:
    """One image and, when known, its instance-label file."""

    image: Path
    label: Path | None = None

    @property
    def name(self) -> str:
        return self.image.stem

    def to_json(self) -> dict[str, str | None]:
        return {"image": str(self.image), "label": None if self.label is None else str(self.label)}

    @classmethod
    def from_json(cls, data: dict[str, str | None]) -> Sample:
        label = data.get("label")
        return cls(Path(str(data["image"])), None if label is None else Path(label))


@dataclass
class Splits:
    """Train / validation / test lists; saved as ``splits.json`` in each run folder."""

    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def __getitem__(self, split: str) -> list[Sample]:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"Unknown split {split!r}; valid splits are: train, val, test.")
        return getattr(self, split)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def save(self, path: str | os.PathLike) -> Path:
        data = {k: [s.to_json() for s in self[k]] for k in ("train", "val", "test")}
        return write_text(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Splits:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{k: [Sample.from_json(d) for d in data.get(k, [])] for k in ("train", "val", "test")})
