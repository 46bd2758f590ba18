"""Export a run's network to ONNX or TorchScript, verified against PyTorch.

The exported graph takes ``(N, C, H, W)`` float32 images that are already normalised the way
celltune normalises them (each channel mapped to [0, 1] between its 1st and 99.8th
percentile, clipped; see :func:`celltune.io.normalize`). Any ImageNet mean/std the weights
need is *inside* the graph (the model's :class:`~celltune.models.Segmenter` applies it), so a
consumer must not apply it again. By default the output is the foreground probability
``(N, 1, H, W)`` (sigmoid of the binary logit, the softmax's foreground channel for
two-class heads, ``1 - P(background)`` for boundary heads, the sigmoid of channel 0 for
distance heads), so ``mask = probability >= threshold``; ``logits=True`` exports the raw
``(N, 1|2|3, H, W)`` logits instead (a boundary head's instances are decoded from its
softmax, a distance head's from the sigmoid of both its channels, so a consumer who wants
them exports logits). H and W must be multiples of the size divisor (32).

Beside ``<name>.onnx`` / ``<name>.pt`` goes ``<name>.json`` with the threshold, head,
channels, normalisation, size divisor, checksum and the verification result; the same JSON
(less checksum and verification) is embedded in the model file under ``celltune.json`` (ONNX
``metadata_props``, TorchScript extra file).

ONNX uses PyTorch's TorchScript-based exporter (no extra packages); TorchScript uses tracing.
Both record the graph for one input size; the export is then run at other sizes and compared
with PyTorch, so a model whose graph does not generalise is caught here, not in deployment.
Known limits: ``swin_unet`` bakes its window shifts and masks into the trace and ``pspnet``'s
adaptive pooling cannot be expressed in ONNX for a variable size; both export only with a
fixed ``size`` (and ``pspnet`` to ONNX only where H/8 and W/8 are multiples of 6).

Example:
    >>> result = export_run("runs/unet", format="onnx")     # doctest: +SKIP
    >>> result.path, result.max_abs_diff                     # doctest: +SKIP
    (PosixPath('runs/unet/export/model.onnx'), 2.4e-07)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from celltune import __version__
from celltune.errors import CelltuneError, ConfigError, RunError
from celltune.inference.predict import Predictor
from celltune.io import NORMALIZE_HIGH, NORMALIZE_LOW, atomic_path, write_text
from celltune.models.build import foreground_probability
from celltune.rundir import RunDir

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: The input normalisation of :func:`celltune.io.normalize` (its defaults), per channel.
NORMALIZATION = {
    "method": "percentile",
    "low": NORMALIZE_LOW,
    "high": NORMALIZE_HIGH,
    "per_channel": True,
    "range": [0.0, 1.0],
    "clip": True,
    "note": "x = clip((x - p_low) / (p_high - p_low), 0, 1) per channel; when p_high == p_low "
    "use the channel's min and max; a constant channel becomes 0",
}
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "image", "probability"
#: Key of the metadata JSON inside the model file (ONNX metadata_props, TorchScript extra file).
METADATA_KEY = "celltune.json"


class ExportError(CelltuneError):
    """A model cannot be exported, or the export does not reproduce PyTorch."""


@dataclass
class ExportResult:
    """Where the export went and how closely it reproduces PyTorch."""

    path: Path
    metadata_path: Path
    format: str
    dynamic: bool
    checked: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        """Largest |export - PyTorch| over all checked sizes (NaN when nothing was checked)."""
        return max(self.checked.values()) if self.checked else float("nan")

    def summary(self) -> str:
        """One line for the command line."""
        sizes = ", ".join(self.checked) or "no sizes (onnxruntime not installed)"
        return (
            f"Exported {self.format} to {self.path} (metadata {self.metadata_path.name}); "
            f"checked at {sizes}: max abs diff {self.max_abs_diff:.2e}."
        )


class ExportModule(nn.Module):
    """The network plus its output activation: what the exported graph computes."""

    def __init__(self, model: nn.Module, logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.logits = logits
        # The distance head's two channels are not a softmax: the head decides the activation.
        self.head = getattr(model, "head", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.logits:
            return out
        return foreground_probability(out, keepdim=True, head=self.head)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"256x384"`` -> ``(256, 384)`` (height, width); ``None`` stays None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--size {text!r} is not HxW, e.g. 512x512.") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--size {text!r} must have positive height and width.")
    return h, w


def export_run(
    run: str | os.PathLike,
    *,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    opset: int = 17,
    size: tuple[int, int] | None = None,
    logits: bool = False,
    checkpoint: str = "best",
    overwrite: bool = False,
) -> ExportResult:
    """Export ``RUN/checkpoints/<checkpoint>.ckpt`` and write its metadata JSON beside it.

    Args:
        run: Run folder.
        format: ``"onnx"`` or ``"torchscript"``.
        out: Model file (default ``RUN/export/model.onnx`` or ``model.pt``).
        opset: ONNX opset version.
        size: Fixed ``(H, W)``; None exports dynamic batch, height and width.
        logits: Export logits instead of the foreground probability.
        checkpoint: ``"best"`` or ``"last"``.
        overwrite: Replace an existing export.

    Raises:
        ConfigError: Unknown format or a size that is not a multiple of the divisor.
        RunError: The run is unusable, or the export exists and ``overwrite`` is False.
        ExportError: The exporter fails or the export does not reproduce PyTorch.
    """
    fmt = _check_format(format)
    predictor = Predictor.from_run(run, checkpoint=checkpoint, device="cpu")
    path = Path(out) if out is not None else RunDir(run).export_dir / f"model{FORMATS[fmt]}"
    meta = {
        "run": str(run),
        "checkpoint": checkpoint,
        "threshold": predictor.threshold,
        "channels": predictor.channels,
        "resize": predictor.resize,
        "instances": predictor.instance_params(),
    }
    return export_model(
        predictor.model,
        path,
        format=fmt,
        opset=opset,
        size=size,
        logits=logits,
        metadata=meta,
        overwrite=overwrite,
    )


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    opset: int = 17,
    size: tuple[int, int] | None = None,
    logits: bool = False,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export a :class:`~celltune.models.Segmenter`, verify it, and write ``<name>.json``.

    ``metadata`` may hold ``threshold`` (default 0.5), ``channels``, ``resize`` and provenance
    such as ``run``; see :func:`export_run` for the other arguments.
    """
    fmt = _check_format(format)
    path = Path(path)
    if path.suffix.lower() == ".json":
        raise ConfigError(
            f"--out {path}: the model file cannot end in .json (the metadata "
            "goes there); use .onnx or .pt."
        )
    meta_path = path.with_suffix(".json")
    _refuse_existing([path, meta_path], overwrite)
    # eval() on the wrapper too: the ONNX exporter restores the wrapper's mode recursively.
    module = ExportModule(model.cpu().to(memory_format=torch.contiguous_format), logits).eval()
    channels = int(getattr(model, "in_channels", (metadata or {}).get("channels", 1)))
    divisor = int(getattr(model, "size_divisor", 32))
    sizes = _check_sizes(size, divisor)
    example = torch.rand(1, channels, *sizes[0], generator=torch.Generator().manual_seed(0))
    info = describe(model, path, fmt, opset, size, logits, metadata or {})
    with atomic_path(path) as tmp:
        _export(module, example, tmp, fmt, opset, dynamic=size is None, info=info)
        checked = verify(module, tmp, fmt, channels, sizes, name=_name(model))
    info.update(sha256=_sha256(path), verified={"tolerance": TOLERANCE, "max_abs_diff": checked})
    write_text(meta_path, json.dumps(info, indent=1) + "\n")
    return ExportResult(path, meta_path, fmt, dynamic=size is None, checked=checked)


def _check_format(format: str) -> str:
    fmt = format.lower()
    if fmt not in FORMATS:
        raise ConfigError(
            f"--format {format!r} is unknown; valid formats are: {', '.join(FORMATS)}."
        )
    return fmt


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise RunError(
            f"{existing[0]}: already exists; pass --overwrite to replace it or "
            "choose another --out."
        )


def _check_sizes(size: tuple[int, int] | None, divisor: int) -> list[tuple[int, int]]:
    """Sizes to export and verify at: the example size first."""
    if size is None:
        # Square, then non-square in both orientations: catches baked-in shapes.
        return [(2 * divisor, 2 * divisor), (3 * divisor, 4 * divisor), (4 * divisor, divisor)]
    if size[0] % divisor or size[1] % divisor:
        raise ConfigError(
            f"--size {size[0]}x{size[1]} must be a multiple of {divisor} in height and width."
        )
    return [size]


def _name(model: nn.Module) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _export(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    fmt: str,
    opset: int,
    dynamic: bool,
    info: dict[str, Any],
) -> None:
    name = _name(module.model)
    what = "with dynamic height and width" if dynamic else f"at {tuple(example.shape[2:])}"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy ONNX exporter and jit.trace warn about their deprecation and about
            # shape-dependent Python code; verification below is what decides.
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                _export_onnx(module, example, path, opset, dynamic, info)
            else:
                traced = torch.jit.trace(module, example, check_trace=False)
                extra = {METADATA_KEY: json.dumps(info)}
                torch.jit.save(traced, str(path), _extra_files=extra)
    except Exception as exc:
        raise ExportError(
            f"{name} cannot be exported to {fmt} {what} ({_first_line(exc)})"
            + ("; try a fixed --size such as 512x512." if dynamic else ".")
        ) from exc


def _export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    dynamic: bool,
    info: dict[str, Any],
) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
    )
    _embed_onnx_metadata(path, info)


def _embed_onnx_metadata(path: Path, info: dict[str, Any]) -> None:
    """Store the metadata JSON in the model's ``metadata_props`` (needs the onnx package)."""
    try:
        import onnx
    except ImportError:
        return  # the JSON file beside the model still carries it
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.save(proto, str(path))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def verify(
    module: nn.Module,
    path: Path,
    fmt: str,
    channels: int,
    sizes: list[tuple[int, int]],
    *,
    name: str = "model",
) -> dict[str, float]:
    """Max |export - PyTorch| per size on random inputs (batch 2); raise when > TOLERANCE.

    ONNX is run with onnxruntime; without it, ONNX exports are left unchecked (empty result).
    """
    runner = _runner(path, fmt)
    if runner is None:
        return {}
    gen = torch.Generator().manual_seed(1)
    checked: dict[str, float] = {}
    for h, w in sizes:
        x = torch.rand(2, channels, h, w, generator=gen)
        with torch.no_grad():
            expected = module(x).numpy()
        try:
            got = runner(x)
        except Exception as exc:
            raise ExportError(
                f"{name}: the {fmt} export fails at {h}x{w} "
                f"({_first_line(exc)}); export with a fixed --size."
            ) from exc
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.inf
        checked[f"{h}x{w}"] = diff
        if not diff < TOLERANCE * max(1.0, float(np.abs(expected).max())):
            raise ExportError(
                f"{name}: the {fmt} export differs from PyTorch at {h}x{w} (max abs diff "
                f"{diff:.3g}), so its graph does not generalise to this size; export with a "
                "fixed --size."
            )
    return checked


def _runner(path: Path, fmt: str) -> Any:
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.load's deprecation notice
            loaded = torch.jit.load(str(path), map_location="cpu")

        def run_ts(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return loaded(x).numpy()

        return run_ts
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn(
            "onnxruntime is not installed; the ONNX export was not verified.", stacklevel=3
        )
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]


def describe(
    model: nn.Module,
    path: Path,
    fmt: str,
    opset: int,
    size: tuple[int, int] | None,
    logits: bool,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """What a consumer needs to use the export (``<name>.json`` adds checksum and checks)."""
    head = str(getattr(model, "head", "binary"))
    out_channels = int(getattr(model, "out_channels", 1))
    divisor = int(getattr(model, "size_divisor", 32))
    channels = int(getattr(model, "in_channels", metadata.get("channels", 1)))
    mean = getattr(model, "mean", torch.zeros(channels)).flatten().tolist()
    std = getattr(model, "std", torch.ones(channels)).flatten().tolist()
    axes = ["batch", "height", "width"] if size is None else ["batch"]
    return {
        "celltune_version": __version__,
        "file": path.name,
        "format": fmt,
        "opset": opset if fmt == "onnx" else None,
        "model": _name(model),
        "options": getattr(model, "options", {}),
        "head": head,
        "threshold": float(metadata.get("threshold", 0.5)),
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": channels,
            "dynamic_axes": axes,
            "size": None if size is None else list(size),
            "size_divisor": divisor,
            "color": "1 channel: mean of the colour channels; 3 channels: gray repeated",
            "resize": metadata.get("resize"),
        },
        "normalization": NORMALIZATION,
        "embedded_normalization": {
            "mean": mean,
            "std": std,
            "note": "applied inside the graph; do not apply again",
        },
        "output": {
            "name": OUTPUT_NAME,
            "kind": "logits" if logits else "probability",
            "channels": out_channels if logits else 1,
            "meaning": (
                "raw logits; sigmoid (binary) or softmax over channels (two_class; "
                "boundary: background, interior, boundary); distance: sigmoid of each "
                "channel (0: foreground, 1: distance to the cell border over the cell's "
                "largest, 1 at the centre)"
                if logits
                else "foreground probability; mask = probability >= threshold"
            ),
        },
        "padding": "pad H and W up to a multiple of size_divisor (mirror), crop the output back",
        # The run's instance step (celltune.inference.instances), tuned on validation by F1.
        **({"instances": metadata["instances"]} if "instances" in metadata else {}),
        **{k: metadata[k] for k in ("run", "checkpoint") if k in metadata},
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
