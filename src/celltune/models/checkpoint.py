"""Checkpoints: what architecture one holds, and the network rebuilt from it.

A celltune checkpoint is a Lightning checkpoint whose hyperparameters hold the run's model
section and input channels, so the checkpoint alone rebuilds the network; no Lightning is
needed to read it.

Example:
    >>> net, hparams = load_model_from_checkpoint("runs/unet/checkpoints/best.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from celltune.config import ModelConfig, RunConfig
from celltune.errors import RunError
from celltune.models.build import build_network
from celltune.rundir import RunDir

# Fields of the model section that decide the network's architecture; the initial weights do
# not (a checkpoint replaces them).
_ARCHITECTURE = ("name", "encoder", "head", "options")


def architecture(model: dict[str, Any] | ModelConfig, in_channels: int) -> dict[str, Any]:
    """The parts of a model description that must match for weights to fit."""
    data = model.model_dump(mode="json") if isinstance(model, ModelConfig) else dict(model)
    arch = {key: data.get(key) for key in _ARCHITECTURE}
    arch["options"] = dict(arch["options"] or {})
    arch["in_channels"] = int(in_channels)
    return arch


def describe(arch: dict[str, Any]) -> str:
    """``unet (head binary, 1 channel, options tiny=True)`` for error messages."""
    extras = [f"head {arch['head']}", f"{arch['in_channels']} channel(s)"]
    if arch.get("encoder"):
        extras.append(f"encoder {arch['encoder']}")
    if arch.get("options"):
        extras.append(", ".join(f"{k}={v}" for k, v in sorted(arch["options"].items())))
    return f"{arch['name']!r} ({', '.join(extras)})"


def mismatch(
    checkpoint: Path, hparams: dict[str, Any], expected: dict[str, Any], source: str | os.PathLike
) -> RunError | None:
    """A :class:`RunError` when the checkpoint's architecture differs from ``expected``."""
    found = architecture(hparams.get("model", {}), hparams.get("in_channels", 1))
    if found == expected:
        return None
    return RunError(
        f"{checkpoint}: checkpoint holds model {describe(found)} but {source} describes "
        f"{describe(expected)}; use that run's own checkpoint or start over with --overwrite."
    )


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """A celltune (Lightning) checkpoint; RunError naming the file if unusable."""
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        # torch's messages run to several sentences of advice; the first says what is wrong.
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
        raise RunError(
            f"{path}: cannot read the checkpoint ({reason}); it is corrupt or not a checkpoint."
        ) from exc
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams:
        raise RunError(f"{path}: not a celltune checkpoint (no model hyperparameters).")
    return ckpt


def read_hparams(path: Path) -> dict[str, Any]:
    """The hyperparameters stored in a checkpoint; RunError naming the file if unusable."""
    return read_checkpoint(path)["hyper_parameters"]


def load_model_from_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu", config: RunConfig | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint; returns (model in eval mode, hparams).

    A checkpoint must hold the architecture its run describes (``config``, or the
    ``config.yaml`` of the run folder the checkpoint sits in): one copied in from another run
    would otherwise be used with this run's head, channels and threshold and silently give
    wrong masks.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    hparams = ckpt["hyper_parameters"]
    run = RunDir.of_checkpoint(path)
    if config is None and run is not None:
        config = run.read_config()
    if config is not None:
        source = run.config_path if run is not None else "the run's config"
        error = mismatch(path, hparams, architecture(config.model, config.data.channels), source)
        if error is not None:
            raise error
    model_cfg = ModelConfig.model_validate({**hparams["model"], "weights": "none"})
    net = build_network(model_cfg, int(hparams.get("in_channels", 1)))
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunError(
            f"{path}: checkpoint weights do not fit model {model_cfg.name!r} "
            f"({str(exc).splitlines()[0]})."
        ) from exc
    net.eval()
    return net, hparams
