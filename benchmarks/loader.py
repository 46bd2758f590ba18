"""Training-loader throughput: CropDataset crops with augmentation through a torch DataLoader.

Generates random blob images (16-bit, like the NeurIPS TIFFs) with their instance labels,
writes them to a temporary folder, and times full passes of a DataLoader over a CropDataset
for each worker count, with and without the in-memory image cache. The first pass of each
configuration is a warm-up (worker start-up, first decode); the table reports the passes
after it.

Example:
    python benchmarks/loader.py --workers 0 2 --augment aug2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from celltune.data.dataset import CropDataset
from celltune.data.samples import Sample
from celltune.io import write_tiff


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="number of synthetic images")
    parser.add_argument("--size", type=int, default=1024, help="side of each synthetic image")
    parser.add_argument("--crop", type=int, default=256, help="training crop side")
    parser.add_argument("--batch", type=int, default=8, help="DataLoader batch size")
    parser.add_argument("--batches", type=int, default=25, help="batches per timed pass")
    parser.add_argument("--passes", type=int, default=2, help="timed passes after the warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers")
    parser.add_argument("--augment", default="aug2", help="augmentation preset")
    parser.add_argument("--target", default="binary", help="binary, two_class or three_class")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def blob_labels(size: int, rng: np.random.Generator) -> np.ndarray:
    """Instance map of non-overlapping-ish discs covering roughly a fifth of the image."""
    labels = np.zeros((size, size), dtype=np.int16)
    yy, xx = np.ogrid[:size, :size]
    radius_mean = max(4, size // 60)
    count = int(0.2 * size * size / (np.pi * radius_mean**2))
    for cell_id in range(1, count + 1):
        cy, cx = rng.integers(0, size, 2)
        r = int(rng.integers(radius_mean // 2, 2 * radius_mean))
        y0, y1, x0, x1 = max(cy - r, 0), cy + r + 1, max(cx - r, 0), cx + r + 1
        disc = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 <= r * r
        labels[y0:y1, x0:x1][disc] = cell_id
    return labels


def write_dataset(folder: Path, images: int, size: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(images):
        labels = blob_labels(size, rng)
        noise = rng.normal(0, 300, labels.shape)
        image = np.clip(2000 + 9000 * (labels > 0) + noise, 0, 65535).astype(np.uint16)
        image_path, label_path = folder / f"cell_{k:05d}.tif", folder / f"cell_{k:05d}_label.tiff"
        write_tiff(image_path, image)
        write_tiff(label_path, labels)
        samples.append(Sample(image_path, label_path))
    return samples


def time_loader(
    samples: list[Sample], args: argparse.Namespace, workers: int, cache: bool
) -> float:
    """Images per second over the timed passes."""
    dataset = CropDataset(
        samples,
        crop=args.crop,
        augment=args.augment,
        samples_per_epoch=args.batch * args.batches,
        seed=args.seed,
        cache=cache,
        target=args.target,
    )
    if cache:
        dataset.preload()  # before the fork, so the workers share one filled cache
    sampler = dataset.sampler()
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    elapsed = 0.0
    for epoch in range(args.passes + 1):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        for _ in loader:
            pass
        if epoch > 0:
            elapsed += time.perf_counter() - start
    return args.passes * len(dataset) / elapsed


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="celltune-loader-") as tmp:
        samples = write_dataset(Path(tmp), args.images, args.size, args.seed)
        print(
            f"{args.images} images {args.size}², crops {args.crop}², {args.augment}, "
            f"batch {args.batch}, {args.batches} batches/pass, target {args.target}"
        )
        print(f"{'workers':>7} | {'cache':>5} | {'images/s':>8} | {'ms/batch':>8}")
        print(f"{'-' * 7}-+-{'-' * 5}-+-{'-' * 8}-+-{'-' * 8}")
        for workers in args.workers:
            for cache in (True, False):
                rate = time_loader(samples, args, workers, cache)
                print(
                    f"{workers:>7} | {'on' if cache else 'off':>5} | {rate:8.1f} | "
                    f"{1000 * args.batch / rate:8.1f}"
                )


if __name__ == "__main__":
    main()
