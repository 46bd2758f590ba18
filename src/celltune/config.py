"""Typed, validated configuration for runs and studies; YAML in and out.

A :class:`RunConfig` fully describes one training run (data, model, training recipe,
evaluation). It is saved as ``config.yaml`` in the run folder, so a run can be rebuilt and
re-evaluated from disk alone. Unknown keys are rejected with the list of valid ones.

Example:
    >>> cfg = RunConfig.model_validate({"model": {"name": "unet"}, "train": {"epochs": 3}})
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from celltune.errors import ConfigError
from celltune.io import write_text


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Section):
    """Procedural dataset used when no data root is given."""

    n: int = Field(48, ge=3, description="number of images")
    size: int = Field(256, ge=32, description="side length in pixels")
    seed: int = 0
    png_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share written as RGB png")


class DataConfig(_Section):
    """Where images come from and how they are split and fed to the model.

    ``filter``, ``val``, ``channels``, ``crop`` and ``foreground_sampling`` are derived from
    the dataset's fingerprint when a run does not give them (:mod:`celltune.data.derive`);
    the defaults below are what a bare ``DataConfig`` holds before that.
    """

    root: Path | None = Field(None, description="dataset root; None = synthetic data")
    synthetic: SynthConfig = Field(default_factory=SynthConfig)
    filter: str = Field("study", description="'study' (tif/tiff only) or 'all'")
    channels: Literal[1, 3] = Field(1, description="1 = convert to grayscale, 3 = keep RGB")
    val: float = Field(20, gt=0, description="validation images: count (>=1) or fraction (<1)")
    test: str = Field(
        "auto", description="'auto' (Tuning folder, else a held-out fraction) or a list file"
    )
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    crop: int = Field(256, ge=32, description="training crop side (multiple of 32)")
    samples_per_epoch: int | None = Field(
        None, ge=1, description="random crops per epoch; default = number of training images"
    )
    foreground_sampling: float = Field(
        0.0, ge=0.0, le=1.0, description="probability a crop is centred on a foreground pixel"
    )
    resize: float | None = Field(None, gt=0.0, description="rescale factor applied on load")
    pixel_size: float | None = Field(
        None, gt=0.0, description="physical pixel size of the training images in µm, if known; "
        "prediction rescales images of another pixel size to it"
    )
    cache: bool = Field(True, description="keep decoded, normalised images in memory")
    num_workers: int = Field(0, ge=0)

    @field_validator("crop")
    @classmethod
    def _crop_multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"crop must be a multiple of 32, got {v}")
        return v


class ModelConfig(_Section):
    """Which network, its encoder, initial weights and output head."""

    name: str = "unet"
    encoder: str | None = Field(None, description="encoder of SMP models; None = resnet34")
    weights: str = Field("none", description="'none', 'imagenet' or a path to a weights file")
    head: Literal["binary", "two_class", "boundary", "distance"] = Field(
        "binary",
        description="binary (sigmoid), two_class (softmax), boundary (softmax over "
        "background/interior/boundary: instances separated by the predicted boundaries) or "
        "distance (foreground + each cell's normalised distance to its border: instances "
        "grown from the distance peaks)",
    )
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Section):
    """The training recipe."""

    epochs: int | None = Field(
        None, ge=1,
        description="epochs; unset = until max_time is used, or derived from the number of "
        "training images when no max_time is given (celltune.data.derive.training_epochs)",
    )
    max_time: float | None = Field(
        None, gt=0,
        description="wall-clock budget in minutes: training runs until it is used, the "
        "learning rate annealed to its end (a cap only when epochs is given too)",
    )
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: str = Field("bce_dice", description="bce_dice, dice, focal, bce, ce")
    gaps: bool = Field(
        False,
        description="binary head: learn the mask with a gap where touching cells meet, so "
        "the instance step splits them (celltune.data.targets.binary_gaps_target)",
    )
    aug: str = Field(
        "aug2",
        description="augmentation preset: none, aug1, aug2 (intensity augmentation makes "
        "models robust to the background and illumination changes between datasets)",
    )
    patience: int | None = Field(None, ge=1, description="early stopping on val Dice (epochs)")
    val_every: int | Literal["auto"] = Field(
        "auto",
        description="validate every this many epochs; auto keeps validation near 15% of the "
        "training compute (whole-image validation of large images is costly on a CPU)",
    )
    grad_clip: float | None = Field(1.0, gt=0)
    precision: str = Field("auto", description="auto, 32, bf16-mixed, 16-mixed")
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    channels_last: bool = True
    compile: bool = Field(
        False,
        description="torch.compile the network: pays on long runs (inference 1.17x on a 2-core "
        "CPU after about a minute of compiling); off by default",
    )

    @field_validator("devices")
    @classmethod
    def _device_count(cls, v: int | str) -> int | str:
        # "2" from a command line or YAML string is a count, like 2; "auto" stays a word.
        return int(v) if isinstance(v, str) and v.isdigit() else v

    @field_validator("val_every")
    @classmethod
    def _positive_interval(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"val_every must be 'auto' or at least 1, got {v}")
        return v


class ThresholdConfig(_Section):
    """Probability-threshold sweep on the validation split."""

    start: float = Field(0.05, gt=0, lt=1)
    stop: float = Field(0.95, gt=0, lt=1)
    step: float = Field(0.05, gt=0, lt=1)
    refine: bool = True


class EvalConfig(_Section):
    """How whole images are predicted during validation and evaluation."""

    tile: int = Field(512, ge=32, description="tile side for images larger than this")
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    batch_size: int = Field(4, ge=1)
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals")


class RunConfig(_Section):
    """Everything needed to train, choose the threshold and evaluate one model."""

    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    derived: dict[str, str] = Field(
        default_factory=dict,
        description="settings derived from the dataset's fingerprint (dotted path -> reason); "
        "written by training, informational when read",
    )


class StudyRow(_Section):
    """One row of a study: a name plus overrides of the study's defaults."""

    name: str
    label: str | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    paper: dict[str, float | str] | None = Field(
        None, description="published numbers for this row (dice, iou, threshold)"
    )


class StudyConfig(_Section):
    """A list of rows sharing data and defaults; see configs/neurips.yaml."""

    name: str = "study"
    description: str = ""
    defaults: RunConfig = Field(default_factory=RunConfig)
    rows: list[StudyRow]

    def run_config(self, row: StudyRow) -> RunConfig:
        """The defaults with ``row``'s overrides applied, validated."""
        base = self.defaults.model_dump(mode="json")
        merged = deep_merge(
            base,
            {"name": row.name, "model": row.model, "train": row.train, "data": row.data},
        )
        return _validate(RunConfig, merged, f"study row {row.name!r}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            parts.append(f"{loc}: {e['msg']}")
    return f"{source}: invalid configuration ({'; '.join(parts)})."


def _validate(cls: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        message = _format_error(err, source)
        extra = [e for e in err.errors() if e["type"] == "extra_forbidden"]
        if extra:
            message = message[:-1] + f"; valid keys: {_valid_keys(cls, extra[0]['loc'])}."
        raise ConfigError(message) from err


def _valid_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    model: Any = cls
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return ", ".join(getattr(model, "model_fields", {}))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level of the YAML file.")
    return data


def load_run_config(path: str | os.PathLike) -> RunConfig:
    data = load_yaml(path)
    data.pop("celltune", None)  # provenance block written by save_run_config
    return _validate(RunConfig, data, str(path))


def load_study_config(path: str | os.PathLike) -> StudyConfig:
    return _validate(StudyConfig, load_yaml(path), str(path))


def run_config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    return _validate(RunConfig, data, source)


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 5, "data.root": None}`` -> ``{"train": {"epochs": 5}}``.

    Keys are dotted config paths; ``None`` values (an option that was not given) are left out.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def run_config_with_overrides(
    path: str | os.PathLike | None,
    overrides: Mapping[str, Any],
    *,
    default_name: str | None = None,
) -> RunConfig:
    """A run config: the YAML at ``path`` (or the defaults), then ``overrides`` on top.

    Args:
        path: A run config YAML, or None for the defaults.
        overrides: Dotted config paths -> values (``{"train.epochs": 5}``), as command-line
            options give them; ``None`` means "not given" and keeps the YAML's value.
        default_name: The run's name when neither the YAML nor the overrides set one
            (``celltune train`` uses the run folder's name).

    Raises:
        ConfigError: the YAML or a value is invalid; the message names the source.
    """
    # Only what the YAML gives: settings it leaves out stay unset, so training derives them.
    base = {}
    if path is not None:
        base = load_run_config(path).model_dump(mode="json", exclude_unset=True)
    merged = deep_merge(base, nest(overrides))
    if default_name is not None and merged.get("name") in (None, "run"):
        merged["name"] = default_name
    return run_config_from_dict(merged, str(path or "command line"))


def to_yaml(config: BaseModel, provenance: dict[str, Any] | None = None) -> str:
    data = config.model_dump(mode="json")
    if provenance:
        data = {"celltune": provenance, **data}
    return yaml.safe_dump(data, sort_keys=False)


def save_run_config(
    config: BaseModel, path: str | os.PathLike, provenance: dict[str, Any] | None = None
) -> Path:
    """Write a run or study config as YAML atomically, with provenance when given."""
    return write_text(path, to_yaml(config, provenance))


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (``demo``, ``neurips``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"No packaged config {name!r}; available: {', '.join(available)}.")
    return path
