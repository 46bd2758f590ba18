"""Whole-slide prediction: throughput and peak memory per worker, 1 vs N workers.

Writes a synthetic OME-Zarr slide (NGFF 0.4, 1024² chunks, ~20% of the area in discs of
radius 5-12 on a noisy floor), generated chunk by chunk so the slide never sits in memory,
then predicts it with :func:`celltune.inference.slides.predict_slide` for each worker count.
The model is a small plain U-Net (``unet_plain``, ``tiny``: width 4, untrained) run at full
cost, whose answer is replaced by the drawn cells (``CellLikeOutput`` of
``predict_large.py``), so the watershed sees a realistic mask. Peak RSS per worker is the
largest peak (``VmHWM``) any worker process reported after a block (workers > 1 run as
processes of a ``distributed.LocalCluster``; 1 worker runs in this process, so its number
includes the driver and the import baseline). Each line reports seconds, Mpixel/s, cells,
blocks and that peak. ``--tables`` then times the per-cell GeoJSON and CSV of the last
prediction (:func:`celltune.inference.slide_cells.write_slide_cells`, what ``--geojson
--csv`` add), with its peak traced allocation (tracemalloc, which slows it a little).

Example:
    python benchmarks/predict_slides.py --size 8192 --workers 1 2
    python benchmarks/predict_slides.py --size 16384 --workers 1 2   # the issue's size
    python benchmarks/predict_slides.py --size 8192 --workers 1 --tables
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from predict_large import CellLikeOutput

from celltune.inference.parallel import dask_client, plan_blocks
from celltune.inference.predict import Predictor
from celltune.inference.slide_cells import write_slide_cells
from celltune.inference.slides import predict_slide
from celltune.ome import create_ome_zarr, open_slide


def write_slide(path: Path, size: int, seed: int, chunk: int = 1024) -> Path:
    """A synthetic slide of ``size``², written chunk by chunk."""
    array = create_ome_zarr(path, (size, size), np.uint16, pixel_size=0.5, chunks=(chunk, chunk))
    rng = np.random.default_rng(seed)
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            tile = rng.integers(900, 1100, (chunk, chunk), dtype=np.uint16)
            n = int(0.2 * chunk * chunk / (np.pi * 8.5**2))
            for cy, cx, r in zip(rng.integers(0, chunk, n), rng.integers(0, chunk, n),
                                 rng.integers(5, 13, n), strict=True):
                ys = slice(max(cy - r, 0), min(cy + r + 1, chunk))
                xs = slice(max(cx - r, 0), min(cx + r + 1, chunk))
                yy, xx = np.ogrid[ys, xs]
                tile[ys, xs][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 3000
            array[y: y + chunk, x: x + chunk] = tile
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tables", action="store_true",
                        help="also time the GeoJSON and CSV of the last prediction's cells")
    args = parser.parse_args()
    from celltune.models import create_model

    torch.manual_seed(args.seed)
    net = CellLikeOutput(create_model("unet_plain", in_channels=1, weights="none", tiny=True))
    predictor = Predictor(net, tile=args.tile, batch_size=4, device="cpu")
    print(f"{platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}; "
          f"slide {args.size}² uint16, block {args.block}, margin {args.margin}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        slide = write_slide(Path(tmp) / "slide.ome.zarr", args.size, args.seed)
        print(f"wrote the slide in {time.perf_counter() - start:.0f} s")
        for workers in args.workers:
            with dask_client(workers) as client:
                result = predict_slide(predictor, slide, Path(tmp) / f"out{workers}.zarr",
                                       block=args.block, margin=args.margin, client=client,
                                       workers=workers)
            mpx = args.size**2 / result.seconds / 1e6
            print(f"workers {workers}: {result.seconds:.0f} s, {mpx:.2f} Mpixel/s, "
                  f"{result.cells} cells, {result.blocks} blocks; peak RSS per worker "
                  f"{result.peak_rss_kib / 1024:.0f} MiB; driver peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if args.tables:
            import zarr

            labels = zarr.open_array(str(result.labels / "0"), mode="r")
            plan = plan_blocks((args.size, args.size), args.block, 0, 0)
            tracemalloc.start()
            start = time.perf_counter()
            tables = write_slide_cells(labels, plan, open_slide(slide).source,
                                       geojson=Path(tmp) / "cells.geojson",
                                       csv_path=Path(tmp) / "cells.csv")
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            sizes = ", ".join(f"{k} {f.stat().st_size / 2**20:.0f} MiB"
                              for k, f in tables.files.items())
            print(f"tables: {tables.cells} cells in {seconds:.0f} s "
                  f"({tables.cells / seconds:.0f} cells/s; {sizes}); peak traced allocation "
                  f"{peak / 2**20:.0f} MiB (the labels: "
                  f"{args.size**2 * labels.dtype.itemsize / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
