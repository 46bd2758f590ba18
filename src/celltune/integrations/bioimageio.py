"""A run as a bioimage.io model package (format 0.5), for Fiji/deepImageJ, ilastik, QuPath, napari.

The zip that :func:`export_bioimageio` writes holds ``rdf.yaml`` (the model description,
built and validated with ``bioimageio.spec``), the weights in three formats, test tensors, a
cover and a README model card:

* Weights: TorchScript and ONNX (made by :func:`celltune.inference.export.export_model`, so
  verified against PyTorch at several sizes) and a PyTorch state dict whose architecture is
  :func:`package_network` in this module (it needs celltune installed where it is loaded).
* Input ``image``: axes ``batch, channel, y, x``, float32, the raw intensities after
  celltune's channel conversion (1 channel: the mean of the colour channels). ``y`` and ``x``
  are any multiple of the network's size divisor (32), or one fixed size.
* Preprocessing: ``scale_range`` over ``y, x`` (each sample and channel apart, as
  :func:`celltune.io.normalize` does) from the 1st to the 99.8th percentile, then ``clip``
  to [0, 1]. Any ImageNet mean/std is inside the network; consumers must not add it.
  (celltune falls back to min/max where the two percentiles meet, and maps a constant
  channel to 0; bioimage.io divides by ``p_high - p_low + 1e-6`` instead, so such images
  differ.)
* Output ``probability``: axes ``batch, channel, y, x``, the foreground probability in
  [0, 1] at the input's size; no postprocessing. The run's threshold (``mask = probability
  >= threshold``) and its instance step (watershed ``h`` or ``seed_threshold``, ``min_size``)
  are in the description's ``config.celltune`` and in the README.
* Test tensors: a real validation image of the run, cropped (centre) or mirror-padded to a
  valid size, and the network's output for it as celltune computes it.

``bioimageio.spec`` and ``bioimageio.core`` are the optional extra
``pip install "celltune[bioimageio]"``; nothing here reaches the network (URLs are not
written, so validation makes no web requests).

Example:
    >>> result = export_bioimageio("runs/unet", "unet.zip", authors=["Ada Lovelace"])  # doctest: +SKIP
    >>> result.path                                                               # doctest: +SKIP
    PosixPath('unet.zip')
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from celltune import __version__
from celltune.config import ModelConfig, RunConfig
from celltune.errors import CelltuneError, ConfigError, RunError
from celltune.inference.export import NORMALIZATION, ExportModule, export_model
from celltune.inference.files import overlay_outlines, preview
from celltune.inference.predict import Predictor
from celltune.integrations.bioimageio_card import model_card
from celltune.io import (
    NORMALIZE_HIGH,
    NORMALIZE_LOW,
    atomic_path,
    percentiles,
    read_image,
    to_channels,
    write_png,
    write_text,
)
from celltune.models.build import build_network
from celltune.rundir import RunDir

INSTALL = 'pip install "celltune[bioimageio]"'
INPUT_ID, OUTPUT_ID = "image", "probability"
#: Largest side of the test image: the package's tests run on CPU in seconds.
TEST_SIDE = 256
OPSET = 17
#: Files inside the package (the zip also holds rdf.yaml).
FILES = {
    "torchscript": "weights_torchscript.pt",
    "onnx": "weights.onnx",
    "state_dict": "weights_state_dict.pt",
    "test_input": "test_input.npy",
    "test_output": "test_output.npy",
    "cover": "cover.png",
    "readme": "README.md",
}


class MissingExtraError(CelltuneError):
    """An optional dependency of the requested feature is not installed."""


@dataclass
class BioimageioResult:
    """Where the package went and what it was built from."""

    path: Path
    test_image: Path
    weights: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the command line."""
        return (
            f"Wrote bioimage.io model package {self.path} ({', '.join(self.weights)} weights; "
            f"test image {self.test_image.name}); check it with `bioimageio test {self.path}`."
        )


def require_bioimageio() -> None:
    """Raise :class:`MissingExtraError`, naming the extra to install, without bioimageio."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f"bioimage.io export needs the optional extra: {INSTALL} "
            "(bioimageio.spec and bioimageio.core)."
        ) from None


def package_network(model: dict[str, Any], in_channels: int) -> nn.Module:
    """The package's ``pytorch_state_dict`` architecture: the run's network, no pretrained
    weights, followed by its foreground probability (what the exports compute)."""
    net = build_network(ModelConfig.model_validate({**model, "weights": "none"}), int(in_channels))
    return ExportModule(net).eval()


def export_bioimageio(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    authors: Sequence[str] = (),
    cite: Sequence[str] = (),
    license: str = "MIT",
    name: str | None = None,
    size: tuple[int, int] | None = None,
    checkpoint: str = "best",
    overwrite: bool = False,
) -> BioimageioResult:
    """Write ``RUN`` as a bioimage.io model package (a ``.zip``), validated by bioimageio.spec.

    Args:
        run: Run folder with a checkpoint, config and splits with a validation image.
        out: The ``.zip`` to write (default ``RUN/export/model.zip``).
        authors: Names of the people who trained the model (the package's ``authors``).
        cite: ``"TEXT|DOI"`` or ``"TEXT|https://URL"`` entries for the package's ``cite``.
        license: SPDX licence identifier of the weights.
        name: Human-readable model name (default ``celltune <model> <run name>``).
        size: Fixed ``(H, W)`` input size, for networks that export only at a fixed size.
        checkpoint: ``"best"`` or ``"last"``.
        overwrite: Replace an existing ``out``.

    Raises:
        MissingExtraError: bioimageio.spec is not installed.
        ConfigError: Bad ``out`` suffix, ``cite`` entry, licence or size.
        RunError: The run is unusable, has no readable validation image, or ``out`` exists.
        ExportError: A weights format cannot be exported or does not reproduce PyTorch.
    """
    require_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    rundir = RunDir(run)
    out = Path(out) if out is not None else rundir.export_dir / "model.zip"
    if out.suffix.lower() != ".zip":
        raise ConfigError(f"--out {out}: a bioimage.io package is a .zip file; use model.zip.")
    if out.exists() and not overwrite:
        raise RunError(f"{out}: already exists; pass --overwrite to replace it.")
    predictor = Predictor.from_run(rundir, checkpoint=checkpoint, device="cpu")
    predictor.model.to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory(prefix="celltune-bioimageio-") as tmp:
        folder = Path(tmp)
        image_path, raw = pick_test_image(rundir, predictor, size)
        write_weights(predictor, folder, size, {"run": str(rundir.path), "checkpoint": checkpoint})
        write_test_files(predictor, raw, folder)
        info = {"run": rundir, "predictor": predictor, "image": image_path, "raw": raw,
                "size": size, "checkpoint": checkpoint, "license": license}
        write_text(folder / FILES["readme"], model_card(info, authors, cite))
        descr = describe(info, folder, authors=authors, cite=cite, name=name)
        with atomic_path(out) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
    return BioimageioResult(out, image_path, weights=["torchscript", "onnx", "pytorch_state_dict"])


def pick_test_image(
    rundir: RunDir, predictor: Predictor, size: tuple[int, int] | None
) -> tuple[Path, np.ndarray]:
    """The first usable validation image, as ``(H, W, C)`` raw intensities of a valid size.

    Usable: readable, and no channel so flat that its two percentiles meet (there celltune
    and bioimage.io normalise differently, so the test pair would not be reproducible).
    """
    samples = rundir.read_splits().val
    if not samples:
        raise RunError(f"{rundir.path}: its splits have no validation image for the test tensors.")
    divisor = predictor.divisor
    for sample in samples:
        try:
            raw = to_channels(read_image(sample.image), predictor.channels)
        except CelltuneError:
            continue
        raw = fit_size(raw, size or _test_size(raw.shape[:2], divisor))
        if all(_spread(raw[..., c]) for c in range(raw.shape[-1])):
            return Path(sample.image), np.ascontiguousarray(raw, dtype=np.float32)
    raise RunError(
        f"{rundir.path}: no validation image is readable with contrast in every channel; "
        "the package needs one for its test tensors."
    )


def _spread(channel: np.ndarray) -> bool:
    lo, hi = percentiles(channel, NORMALIZE_LOW, NORMALIZE_HIGH)
    return hi - lo > 1e-6 * max(1.0, abs(hi))


def _test_size(shape: tuple[int, int], divisor: int) -> tuple[int, int]:
    """Each side rounded down to the divisor (at least one divisor), at most TEST_SIDE."""
    cap = max(divisor, TEST_SIDE // divisor * divisor)
    return tuple(min(cap, max(divisor, s // divisor * divisor)) for s in shape)  # type: ignore[return-value]


def fit_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` centre-cropped and/or mirror-padded (bottom/right) to ``size``."""
    out = image
    for axis, want in enumerate(size):
        have = out.shape[axis]
        if have > want:
            start = (have - want) // 2
            out = np.take(out, range(start, start + want), axis=axis)
        elif have < want:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, want - have)
            out = np.pad(out, pad, mode="symmetric")
    return out


def write_weights(
    predictor: Predictor, folder: Path, size: tuple[int, int] | None, meta: dict[str, Any]
) -> None:
    """TorchScript and ONNX through celltune's verified export; the state dict beside them."""
    model = predictor.model
    meta = {**meta, "threshold": predictor.threshold, "channels": predictor.channels,
            "resize": predictor.resize, "instances": predictor.instance_params()}
    for fmt in ("torchscript", "onnx"):
        export_model(model, folder / FILES[fmt], format=fmt, opset=OPSET, size=size,
                     metadata=meta)
    torch.save(ExportModule(model).state_dict(), folder / FILES["state_dict"])


def write_test_files(predictor: Predictor, raw: np.ndarray, folder: Path) -> None:
    """Test input (raw, ``(1, C, H, W)``), its probability, and a cover of both."""
    chw = np.moveaxis(raw, -1, 0)[None]
    np.save(folder / FILES["test_input"], chw.astype(np.float32))
    with torch.no_grad():
        x = torch.from_numpy(predictor.preprocess(raw)[None])
        prob = ExportModule(predictor.model)(x).numpy().astype(np.float32)
    np.save(folder / FILES["test_output"], prob)
    write_png(folder / FILES["cover"], cover(raw, predictor, prob[0, 0]))


def cover(raw: np.ndarray, predictor: Predictor, prob: np.ndarray) -> np.ndarray:
    """The test image beside it with the run's cells outlined: RGB uint8, twice as wide."""
    mask = prob >= predictor.threshold
    labels = predictor.label(mask)
    left = preview(raw)
    return np.concatenate([left, overlay_outlines(left, labels)], axis=1)


def describe(
    info: dict[str, Any],
    folder: Path,
    *,
    authors: Sequence[str],
    cite: Sequence[str],
    name: str | None,
) -> Any:
    """The validated ``bioimageio.spec`` model description (format 0.5) of the package."""
    from bioimageio.spec.model import v0_5 as bio

    predictor, rundir = info["predictor"], info["run"]
    config = rundir.read_config()
    try:
        return bio.ModelDescr(
            name=name or package_name(config.model.name, rundir.name),
            description=(
                f"Cell segmentation ({config.model.name}, {config.model.head} head) trained "
                "with celltune: foreground probability of every pixel."
            ),
            authors=[bio.Author(name=a) for a in authors],
            cite=[cite_entry(c) for c in cite],
            license=bio.LicenseId(info["license"]),
            documentation=bio.FileDescr(source=folder / FILES["readme"]),
            covers=[bio.FileDescr(source=folder / FILES["cover"])],
            tags=["celltune", "cell-segmentation", "semantic-segmentation", "2d", "pytorch",
                  "microscopy", "cells", config.model.name],
            inputs=[input_tensor(bio, predictor, info["size"], folder)],
            outputs=[output_tensor(bio, folder)],
            weights=weights(bio, config, folder),
            config=bio.Config(
                bioimageio=bio.BioimageioConfig(
                    architecture_type=config.model.name[:32], task="segmentation",
                    target_structure=["cells"],
                ),
                celltune=celltune_config(info),
            ),
        )
    except ValueError as exc:  # pydantic's ValidationError: a user-given field is invalid
        raise ConfigError(f"The bioimage.io description is invalid: {exc}") from exc


def package_name(model: str, run: str) -> str:
    """``celltune <model> <run>`` restricted to the characters bioimage.io allows."""
    text = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"celltune {model} {run}")
    return text[:64]


def cite_entry(text: str) -> Any:
    """``"TEXT|DOI"`` or ``"TEXT|https://URL"`` -> a ``CiteEntry``."""
    from bioimageio.spec.model import v0_5 as bio

    words, sep, ref = text.rpartition("|")
    if not sep or not words.strip() or not ref.strip():
        raise ConfigError(
            f"--cite {text!r}: write 'TEXT|DOI' or 'TEXT|https://URL', e.g. "
            "'Author et al. 2024, Journal|10.1000/xyz123'."
        )
    ref = ref.strip()
    if ref.startswith(("http://", "https://")):
        return bio.CiteEntry(text=words.strip(), url=bio.HttpUrl(ref))
    return bio.CiteEntry(text=words.strip(), doi=bio.Doi(ref))


def input_tensor(bio: Any, predictor: Predictor, size: tuple[int, int] | None, folder: Path) -> Any:
    """``batch, channel, y, x`` float32 raw intensities, percentile-scaled then clipped."""
    step = predictor.divisor
    sizes = size or (bio.ParameterizedSize(min=step, step=step),) * 2
    names = ["gray"] if predictor.channels == 1 else ["red", "green", "blue"]
    spatial = ("y", "x")
    return bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID),
        description="raw image; 1 channel: mean of the colour channels",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names]),
            *(bio.SpaceInputAxis(id=bio.AxisId(a), size=s) for a, s in zip(spatial, sizes, strict=True)),
        ],
        test_tensor=bio.FileDescr(source=folder / FILES["test_input"]),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                axes=[bio.AxisId(a) for a in spatial],
                min_percentile=NORMALIZE_LOW, max_percentile=NORMALIZE_HIGH,
            )),
            bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0)),
        ],
    )


def output_tensor(bio: Any, folder: Path) -> Any:
    """``batch, channel, y, x`` foreground probability at the input's size."""
    same = [
        bio.SpaceOutputAxis(
            id=bio.AxisId(a), size=bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID),
                                                     axis_id=bio.AxisId(a))
        )
        for a in ("y", "x")
    ]
    return bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT_ID),
        description="foreground probability; mask = probability >= config.celltune.threshold",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("foreground")]),
              *same],
        test_tensor=bio.FileDescr(source=folder / FILES["test_output"]),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def weights(bio: Any, config: RunConfig, folder: Path) -> Any:
    """State dict (the original) with TorchScript and ONNX converted from it."""
    version = bio.Version(torch.__version__.split("+")[0])
    hparams = {"model": config.model.model_dump(mode="json"), "in_channels": config.data.channels}
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / FILES["state_dict"],
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier("package_network"),
                import_from="celltune.integrations.bioimageio",
                kwargs=hparams,
            ),
            pytorch_version=version,
            comment=f"needs celltune {__version__} installed (pip install celltune)",
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=folder / FILES["torchscript"], pytorch_version=version,
            parent="pytorch_state_dict",
        ),
        onnx=bio.OnnxWeightsDescr(
            source=folder / FILES["onnx"], opset_version=OPSET, parent="pytorch_state_dict",
        ),
    )


def celltune_config(info: dict[str, Any]) -> dict[str, Any]:
    """What celltune knows beyond the spec: threshold, instance step, normalisation, source."""
    predictor: Predictor = info["predictor"]
    return {
        "version": __version__,
        "run": str(info["run"].path),
        "checkpoint": info["checkpoint"],
        "head": predictor.head,
        "threshold": predictor.threshold,
        "instances": predictor.instance_params(),
        "normalization": NORMALIZATION,
        "resize": predictor.resize,
        "test_image": str(info["image"]),
    }
