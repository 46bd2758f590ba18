"""Load a celltune bioimage.io model package back as a :class:`Predictor`.

A package that :func:`celltune.integrations.bioimageio.export_bioimageio` wrote carries the
network's state dict, the architecture's arguments (the run's model config and channels) and,
under ``config.celltune``, the threshold, the instance step and the rescale factor. That is
all a :class:`~celltune.inference.predict.Predictor` needs, so a package predicts exactly as
its run did (tiling and TTA are the caller's choice). Only ``zipfile``, PyYAML and torch are
used: ``bioimageio.core`` need not be installed. Packages from other tools are refused with a
sentence saying so.

Example:
    >>> predictor = predictor_from_package("unet.zip", tile=512)   # doctest: +SKIP
    >>> labels = predictor.predict_instances(image)                # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from celltune.config import ModelConfig
from celltune.errors import RunError
from celltune.inference.predict import Predictor
from celltune.models.build import build_network

#: Names a package's description may have (format 0.5 writes the first).
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: Prefix of the state dict's keys: the package's module wraps the network as ``model``.
STATE_PREFIX = "model."


def is_package(path: str | os.PathLike) -> bool:
    """True for a ``.zip`` file or a folder holding a bioimage.io description."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip"
    return path.is_dir() and any((path / name).is_file() for name in DESCRIPTION_NAMES)


def _reader(path: Path) -> tuple[Callable[[str], bytes], list[str]]:
    """A function reading a member of the package by name, and the members' names."""
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        return (lambda name: (path / name).read_bytes()), names

    def read(name: str) -> bytes:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name)

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise RunError(f"{path}: not a readable model package ({exc}).") from exc
    return read, names


def read_package(path: str | os.PathLike) -> tuple[dict[str, Any], Callable[[str], bytes]]:
    """The package's description (parsed YAML) and a reader for its other files.

    Raises:
        RunError: the path is missing, not a package, or has no readable description.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: not found; give a bioimage.io .zip that celltune exported.")
    read, names = _reader(path)
    found = [n for n in DESCRIPTION_NAMES if n in names]
    if not found:
        raise RunError(f"{path}: holds no {DESCRIPTION_NAMES[0]}; is it a bioimage.io package?")
    try:
        description = yaml.safe_load(read(found[0]))
    except (KeyError, yaml.YAMLError) as exc:
        raise RunError(f"{path}: unreadable {found[0]} ({exc}).") from exc
    if not isinstance(description, dict):
        raise RunError(f"{path}: {found[0]} is not a model description.")
    return description, read


def _celltune_parts(path: Path, description: dict[str, Any]) -> tuple[dict, dict, str]:
    """(celltune config, architecture kwargs, state-dict file) or a RunError naming the file."""
    config = (description.get("config") or {}).get("celltune")
    weights = (description.get("weights") or {}).get("pytorch_state_dict") or {}
    kwargs = (weights.get("architecture") or {}).get("kwargs")
    if not isinstance(config, dict) or not isinstance(kwargs, dict) or "model" not in kwargs:
        raise RunError(
            f"{path}: not a celltune package (no config.celltune or state-dict architecture); "
            "open it with bioimage.io tools instead."
        )
    source = str(weights.get("source") or "weights_state_dict.pt")
    return config, kwargs, Path(source).name


def predictor_from_package(path: str | os.PathLike, **overrides: Any) -> Predictor:
    """A :class:`Predictor` with a celltune package's network, threshold and instance step.

    ``overrides`` are :class:`Predictor` keywords (``tile``, ``tta``, ``device``...); ``None``
    values keep the defaults.

    Raises:
        RunError: the package is missing, unreadable, or was not made by celltune.
    """
    path = Path(path)
    description, read = read_package(path)
    config, kwargs, source = _celltune_parts(path, description)
    in_channels = int(kwargs.get("in_channels", 1))
    net = build_network(ModelConfig.model_validate({**kwargs["model"], "weights": "none"}),
                        in_channels)
    try:
        state = torch.load(io.BytesIO(read(source)), map_location="cpu", weights_only=True)
        net.load_state_dict({k.removeprefix(STATE_PREFIX): v for k, v in state.items()})
    except (KeyError, RuntimeError, OSError) as exc:
        raise RunError(f"{path}: its weights {source} do not load ({exc}).") from exc
    options: dict[str, Any] = {
        "head": config.get("head", "binary"),
        "channels": in_channels,
        "threshold": float(config.get("threshold", 0.5)),
        "resize": config.get("resize"),
        "instances": config.get("instances") or {},
    }
    options.update({k: v for k, v in overrides.items() if v is not None})
    predictor = Predictor(net, **options)
    predictor.source = {"package": str(path)}
    return predictor
