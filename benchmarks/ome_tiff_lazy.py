"""Lazy OME-TIFF reading: peak RSS while opening a large pyramidal slide and reading blocks.

Writes a ``size``² uint16 pyramidal OME-TIFF (512² tiles, zlib, 2 levels) tile by tile, then,
in a fresh process, opens it with :func:`celltune.ome.open_slide`, reads the normalisation
overview the slide predictor reads (:func:`celltune.inference.slides.overview_bounds`) and
a few 1024² blocks, and prints that process's peak RSS against the image's full size.

Example:
    python benchmarks/ome_tiff_lazy.py --size 16384
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

TILE = 512


def tiles(size: int, step: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(0, size // step, TILE):
        for _ in range(0, size // step, TILE):
            yield rng.integers(900, 3000, (TILE, TILE), dtype=np.uint16)


def write(path: Path, size: int) -> None:
    meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(size, 1, 0), shape=(size, size), dtype=np.uint16, tile=(TILE, TILE),
                 subifds=1, metadata=meta, compression="zlib")
        tw.write(tiles(size, 8, 1), shape=(size // 8, size // 8), dtype=np.uint16,
                 tile=(TILE, TILE), subfiletype=1, compression="zlib")


MEASURE = """
import resource, sys
from celltune.ome import open_slide
from celltune.inference.slides import overview_bounds
from celltune.inference.predict import Predictor
import torch
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
slide = open_slide(sys.argv[1])
bounds = overview_bounds(slide, Predictor(torch.nn.Identity(), device="cpu"))
for y in (0, 4096, 8192):
    block = slide.read((slice(y, y + 1024), slice(y, y + 1024)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
full = slide.shape_yx[0] * slide.shape_yx[1] * 2 / 2**20
print(f"{slide.shape_yx} levels {slide.levels} pixel size {slide.pixel_size} um; bounds {bounds}")
print(f"peak RSS {peak:.0f} MiB ({peak - base:.0f} MiB above the {base:.0f} MiB after "
      f"imports) while the full image is {full:.0f} MiB")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.ome.tif"
        write(path, args.size)
        subprocess.run([sys.executable, "-c", MEASURE, str(path)], check=True)


if __name__ == "__main__":
    main()
