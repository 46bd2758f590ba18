"""The benchmark's fixed split: train / validation / test with correlated images kept together."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data.groups import GROUP_RULES, group_of
from celltune.data.neurips import discover
from celltune.data.samples import Sample, Splits
from celltune.errors import ConfigError
from celltune.io import write_text
from celltune.rundir import BenchDir

# group_of and GROUP_RULES live in celltune.data.groups (the fingerprint uses them too);
# importing them here keeps `from celltune.workflows.bench_split import group_of` working.
__all__ = ["GROUP_RULES", "group_of", "make_split", "prepare_split"]


def _take(groups: list[tuple[str, list[Sample]]], target: int, leave: int) -> tuple[list, list]:
    """Whole groups, in order, while each brings the count closer to ``target``; at least
    one group (the smallest) unless that would leave fewer than ``leave`` groups."""
    taken: list = []
    rest: list = []
    for key, members in groups:
        count = sum(len(m) for _, m in taken)
        closer = abs(count + len(members) - target) < abs(count - target)
        if closer and len(groups) - len(taken) - 1 >= leave:
            taken.append((key, members))
        else:
            rest.append((key, members))
    if not taken and len(rest) > leave:
        smallest = min(rest, key=lambda g: (len(g[1]), g[0]))
        taken, rest = [smallest], [g for g in rest if g is not smallest]
    return taken, rest


def make_split(samples: Sequence[Sample], *, test_fraction: float = 0.25,
               val_fraction: float = 0.15, group_pattern: str | None = None,
               seed: int = 0) -> tuple[Splits, dict[str, Any]]:
    """Train / validation / test with every group of correlated images in one split.

    Groups (see :func:`group_of`) are shuffled with ``seed`` and dealt whole to test, then to
    validation, aiming at the fractions. When a single group is left for training and
    validation (two movies), validation is the last images of that group by name (a block of
    consecutive frames), which is said in the returned description.
    """
    grouped: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.name):
        grouped.setdefault(group_of(sample.name, group_pattern), []).append(sample)
    if len(samples) < 3:
        raise ConfigError(f"need at least 3 labelled images to split, found {len(samples)}.")
    if len(grouped) < 2:
        raise ConfigError("all images fall in one group; pass a group pattern or a split file.")
    keys = sorted(grouped)
    shuffled = np.random.default_rng(seed).permutation(len(keys))
    order = [(keys[i], grouped[keys[i]]) for i in shuffled]
    n = len(samples)
    test, rest = _take(order, max(1, round(test_fraction * n)), leave=1)
    val, train = _take(rest, max(1, round(val_fraction * n)), leave=1)
    note = ""
    if not val:
        members = train[0][1]
        cut = max(1, min(len(members) - 1, round(val_fraction * n)))
        val, train = [(train[0][0], members[-cut:])], [(train[0][0], members[:-cut])]
        note = f"; validation = the last {cut} images of group {train[0][0]!r}"
    if not train[0][1]:
        raise ConfigError("too few images to keep training, validation and test apart.")
    flat = {k: sorted((s for _, m in g for s in m), key=lambda s: s.name)
            for k, g in (("train", train), ("val", val), ("test", test))}
    rule = "user pattern " + repr(group_pattern) if group_pattern else (
        "; ".join(d for _, d in GROUP_RULES) + "; otherwise each image alone")
    info = {"rule": f"whole groups ({rule}), seed {seed}{note}",
            "groups": {k: sorted({key for key, _ in g}) for k, g in
                       (("train", train), ("val", val), ("test", test))}}
    return Splits(**flat), info


def _read_split_file(path: Path, samples: list[Sample]) -> Splits:
    """A user's split: lists of image names (stem or file name) or of ``Sample`` records."""
    data = json.loads(path.read_text(encoding="utf-8"))
    by_name = {**{s.name: s for s in samples}, **{s.image.name: s for s in samples}}
    out = {}
    for key in ("train", "val", "test"):
        entries = data.get(key) or []
        missing = [e for e in entries if isinstance(e, str) and e not in by_name]
        if missing:
            raise ConfigError(f"{path}: {key} names images not in the dataset: {missing[:5]}.")
        out[key] = [by_name[e] if isinstance(e, str) else Sample.from_json(e) for e in entries]
    if not (out["train"] and out["val"] and out["test"]):
        raise ConfigError(f"{path}: train, val and test must each list at least one image.")
    return Splits(**out)


def prepare_split(data_root: Path, out_dir: Path, *, split_file: str | os.PathLike | None = None,
                  group_pattern: str | None = None) -> tuple[Splits, dict[str, Any]]:
    """``out_dir/split.json``: reused when present, else read from ``split_file`` or made."""
    saved = BenchDir(out_dir).split
    samples = discover(data_root).all_samples()
    if split_file is not None:
        splits = _read_split_file(Path(split_file), samples)
        info: dict[str, Any] = {"rule": f"from {split_file}"}
        if saved.is_file() and _names(Splits.load(saved)) != _names(splits):
            raise ConfigError(f"{saved} holds a different split; use a new output folder.")
    elif saved.is_file():
        splits = Splits.load(saved)
        info = json.loads(saved.read_text(encoding="utf-8")).get("info", {"rule": str(saved)})
    else:
        splits, info = make_split(samples, group_pattern=group_pattern)
    info["counts"] = splits.counts()
    data = {k: [s.to_json() for s in splits[k]] for k in ("train", "val", "test")}
    write_text(saved, json.dumps({**data, "info": info}, indent=1))
    return splits, info


def _names(splits: Splits) -> dict[str, list[str]]:
    return {k: [s.name for s in splits[k]] for k in ("train", "val", "test")}
