"""Procedural microscopy images with exact instance labels: celltune's embedded default dataset.

Four modalities are simulated from the same cell geometry (see :mod:`synth_cells`) with their
own contrast (see :mod:`synth_render`): fluorescence (bright cells on a dark field), phase
contrast (dark cells with bright halos), brightfield (faint absorption on a bright field) and
DIC (relief shading along a shear direction). Datasets are written in the NeurIPS CellSeg
layout, and the same seed always gives byte-identical files.

Example:
    >>> image, labels = generate_image(0, 128, "phase_contrast")
    >>> image.dtype.name, labels.dtype.name, int(labels.max()) > 0
    ('uint16', 'int16', True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data.synth_cells import LayoutParams, build_layout, sample_params
from celltune.data.synth_render import RENDERERS, camera, to_rgb8
from celltune.errors import ConfigError, DataError
from celltune.io import normalize, read_image, read_label, write_png, write_text, write_tiff

MODALITIES = ("fluorescence", "phase_contrast", "brightfield", "dic")
GENERATOR_VERSION = 1
MIN_SIZE = 16
MANIFEST = "synthetic.json"


@dataclass
class SyntheticImage:
    """One generated image with its exact labels and the parameters that produced it."""

    image: np.ndarray  # uint16 (H, W)
    labels: np.ndarray  # int16 (H, W), ids 1..cells
    modality: str
    params: LayoutParams
    cells: int  # visible cells = number of label ids
    drawn: int  # cells painted, including fully occluded ones that were dropped


@dataclass
class SheetPanel:
    """One image of a contact sheet, ready to draw (see :func:`contact_sheet_panels`)."""

    image: np.ndarray  # float32 (H, W, 3) in [0, 1]: the normalised image as RGB
    outline: np.ndarray | None  # bool (H, W) instance boundaries; None without labels
    title: str  # "<file name>\n<modality>"


def generate(
    rng_or_seed: int | np.random.SeedSequence | np.random.Generator, size: int, modality: str
) -> SyntheticImage:
    """Generate one ``size``×``size`` image of ``modality`` with its labels and parameters."""
    if modality not in MODALITIES:
        raise ConfigError(
            f"Unknown modality {modality!r}; valid modalities are: {', '.join(MODALITIES)}."
        )
    if size < MIN_SIZE:
        raise ConfigError(f"Image size {size} is too small; use --size {MIN_SIZE} or more.")
    rng = np.random.default_rng(rng_or_seed)
    nuclei_only = modality == "fluorescence" and rng.random() < 0.5
    params = sample_params(rng, size, nuclei_only=nuclei_only)
    layout = build_layout(rng, size, params)
    image = camera(rng, RENDERERS[modality](rng, layout, size), modality)
    labels = layout.ids.astype(np.int16)
    return SyntheticImage(image, labels, modality, params, layout.count, layout.drawn)


def generate_image(
    rng_or_seed: int | np.random.SeedSequence | np.random.Generator, size: int, modality: str
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one image in memory.

    Args:
        rng_or_seed: a seed, ``SeedSequence`` or ``Generator`` (a Generator is advanced).
        size: side length in pixels (square image, at least 16).
        modality: one of :data:`MODALITIES`.

    Returns:
        ``(image, labels)``: uint16 ``(H, W)`` intensities with a camera offset, and int16
        instance ids 1..K (0 = background) that cover exactly the pixels where each cell is
        drawn on top.
    """
    result = generate(rng_or_seed, size, modality)
    return result.image, result.labels


def plan_modalities(rng: np.random.Generator, n: int) -> list[str]:
    """Shuffled blocks of all four modalities, so any dataset of n >= 4 has every one."""
    blocks = [MODALITIES[i] for _ in range(-(-n // 4)) for i in rng.permutation(4)]
    return blocks[:n]


def plan_png(rng: np.random.Generator, n: int, png_fraction: float) -> set[int]:
    """Indices saved as RGB PNG: ``round(n * png_fraction)``, at least 1 when n >= 8."""
    count = round(n * png_fraction)
    if png_fraction > 0 and n >= 8:
        count = max(count, 1)
    return {int(i) for i in rng.choice(n, size=min(count, n), replace=False)}


def _check_args(n: int, size: int, png_fraction: float) -> None:
    if n < 1:
        raise ConfigError(f"--n is {n}; a synthetic dataset needs at least 1 image.")
    if size < MIN_SIZE:
        raise ConfigError(f"--size is {size}; use at least {MIN_SIZE} pixels.")
    if not 0.0 <= png_fraction <= 1.0:
        raise ConfigError(f"png_fraction is {png_fraction}; it must be between 0 and 1.")


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless asked; on overwrite remove only files this module writes."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is a file; choose a folder path for the dataset.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"{out}: folder exists and is not empty; choose a new folder or pass --overwrite."
            )
        # Stale images from a larger earlier run would silently join the new dataset.
        stale = [*out.glob("images/cell_*.*"), *out.glob("labels/cell_*_label.tiff")]
        stale += [out / MANIFEST, out / "contact_sheet.png"]
        for path in stale:
            if path.is_file():
                path.unlink()


def write_dataset(
    out: str | os.PathLike,
    *,
    n: int = 48,
    size: int = 256,
    seed: int = 0,
    png_fraction: float = 0.1,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n`` synthetic images and labels in the NeurIPS CellSeg layout.

    Creates ``out/images/cell_00001.tif`` (uint16; a few ``.png`` RGB uint8),
    ``out/labels/cell_00001_label.tiff`` (int16, zlib) and ``out/synthetic.json`` (generator
    parameters and each image's modality). Every file is written atomically, and the same
    arguments give byte-identical files.

    Returns:
        The image paths, in order.

    Raises:
        DataError: ``out`` is a file, or a non-empty folder and ``overwrite`` is false.
        ConfigError: ``n``, ``size`` or ``png_fraction`` is out of range.
    """
    _check_args(n, size, png_fraction)
    out = Path(out)
    _prepare_folder(out, overwrite)
    plan_seed, *image_seeds = np.random.SeedSequence(seed).spawn(n + 1)
    plan_rng = np.random.default_rng(plan_seed)
    modalities = plan_modalities(plan_rng, n)
    png = plan_png(plan_rng, n, png_fraction)
    paths, records = [], []
    for index, (modality, image_seed) in enumerate(zip(modalities, image_seeds, strict=True)):
        rng = np.random.default_rng(image_seed)
        result = generate(rng, size, modality)
        name = f"cell_{index + 1:05d}"
        if index in png:
            path = write_png(out / "images" / f"{name}.png", to_rgb8(rng, result.image, modality))
        else:
            path = write_tiff(out / "images" / f"{name}.tif", result.image)
        write_tiff(out / "labels" / f"{name}_label.tiff", result.labels)
        paths.append(path)
        records.append(_record(name, path, result))
    manifest = {
        "generator": "celltune.data.synthetic",
        "version": GENERATOR_VERSION,
        "params": {"n": n, "size": size, "seed": seed, "png_fraction": png_fraction},
        "images": records,
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return paths


def _record(name: str, path: Path, result: SyntheticImage) -> dict[str, Any]:
    return {
        "name": name,
        "image": f"images/{path.name}",
        "label": f"labels/{name}_label.tiff",
        "modality": result.modality,
        "format": path.suffix.lstrip("."),
        "cells": result.cells,
        "layout": result.params.to_json(),
    }


def ensure_dataset(
    out: str | os.PathLike, *, n: int, size: int, seed: int, png_fraction: float = 0.1
) -> Path:
    """Write the dataset into ``out`` unless a complete one is already there.

    The manifest is written last, so a folder without it is the remains of an interrupted
    generation: it is regenerated from scratch, and a resumed run trains on exactly the
    images an uninterrupted one would have.
    """
    out = Path(out)
    if not (out / MANIFEST).is_file():
        write_dataset(out, n=n, size=size, seed=seed, png_fraction=png_fraction, overwrite=True)
    return out


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The ``synthetic.json`` of a dataset folder, or an empty dict when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: is not valid JSON ({exc.msg}); regenerate the dataset.") from exc


def outline(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of pixels on an instance boundary (where a 4-neighbour has another id)."""
    edge = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _panel_rgb(image_path: Path) -> np.ndarray:
    shown = normalize(read_image(image_path))
    return np.repeat(shown, 3, axis=-1) if shown.shape[-1] == 1 else shown[..., :3]


def contact_sheet_panels(
    root: str | os.PathLike, max_images: int = 16, outlines: bool = True
) -> list[SheetPanel]:
    """A dataset's first images (normalised RGB), their label outlines and modality titles.

    :func:`celltune.viz.datasets.contact_sheet` draws them.

    Args:
        root: dataset folder with ``images/cell_*.*`` (and ``labels/``, ``synthetic.json``).
        max_images: how many images, in file-name order.
        outlines: read the label files for instance outlines.

    Raises:
        DataError: ``root`` has no ``images/`` folder with readable images.
    """
    root = Path(root)
    images = sorted(p for p in (root / "images").glob("cell_*.*") if p.is_file())[:max_images]
    if not images:
        raise DataError(f"{root}: no images/cell_*.* files; write a dataset there first.")
    modality = {r["name"]: r["modality"] for r in read_manifest(root).get("images", [])}
    panels = []
    for path in images:
        rgb = _panel_rgb(path)
        label_path = root / "labels" / f"{path.stem}_label.tiff"
        edge = None
        if outlines and label_path.is_file():
            edge = outline(read_label(label_path, shape=rgb.shape[:2]))
        title = f"{path.name}\n{modality.get(path.stem, 'unknown')}"
        panels.append(SheetPanel(rgb, edge, title))
    return panels
