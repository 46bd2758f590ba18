"""Large-image prediction: time and peak memory for one synthetic 8192×8192 image.

Builds an untrained full-size U-Net (ResNet34 encoder, no pretrained weights), draws a
synthetic 16-bit image of bright cells on a noisy floor, and predicts it with the same
:class:`~celltune.inference.predict.Predictor` that ``celltune predict`` uses (tiles of
``--tile`` blended by a Gaussian). The network runs at full cost, but its untrained answer is
replaced by the drawn cells (``CellLikeOutput``; ``--raw-output`` keeps it), so the optional
instance labelling afterwards sees a realistic mask. Prints time per
stage and the process's peak resident memory (``resource.getrusage``), which includes
Python, torch and the model; the import baseline is printed too.

Example:
    python benchmarks/predict_large.py --size 8192 --tile 512 --batch-size 4 --threads 2
    python benchmarks/predict_large.py --size 2048 --model none   # tiling overhead only
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from celltune.inference.predict import Predictor
from celltune.runtime import tune_allocator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="image side in pixels")
    parser.add_argument(
        "--model",
        default="unet",
        help="registered model, or 'none' for a "
        "per-pixel sigmoid (measures the tiling machinery alone)",
    )
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--instances",
        choices=["none", "components", "watershed"],
        default="none",
        help="also label instances after predicting",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="run the whole `celltune "
        "predict` path instead: write a TIFF, read it, predict, label, write "
        "mask/labels/overlay",
    )
    parser.add_argument(
        "--raw-output",
        action="store_true",
        help="keep the untrained network's own mask instead of the drawn cells (see "
        "CellLikeOutput)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_image(size: int, seed: int) -> np.ndarray:
    """uint16 image: ~20% of the area in discs of radius 5-12 on a noisy floor of ~1000."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size), dtype=np.uint16)
    for y in range(0, size, 1024):  # noise in row blocks keeps the temporary small
        rows = image[y : y + 1024]
        rows[:] = rng.integers(900, 1100, rows.shape, dtype=np.uint16)
    n_cells = int(0.2 * size * size / (np.pi * 8.5**2))
    for cy, cx, r in zip(
        rng.integers(0, size, n_cells),
        rng.integers(0, size, n_cells),
        rng.integers(5, 13, n_cells),
        strict=True,
    ):
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        yy, xx = np.ogrid[y0 : min(cy + r + 1, size), x0 : min(cx + r + 1, size)]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[y0 : y0 + disc.shape[0], x0 : x0 + disc.shape[1]][disc] = 3000
    return image


class PixelSigmoid(torch.nn.Module):
    """Stand-in network with no cost, to isolate the tiling and blending overhead."""

    size_divisor = 32
    name = "pixel-sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x - 0.5)


class CellLikeOutput(torch.nn.Module):
    """Runs ``net`` at full cost but answers like :class:`PixelSigmoid`.

    An untrained network's mask is noise or all foreground, which would make the instance
    labelling that follows unlike real use; this keeps the network's time and memory and
    gives the labelling the drawn cells (~20% foreground) instead.
    """

    size_divisor = 32

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.name = f"{getattr(net, 'name', 'net')} (cell-like output)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return 8.0 * (x[:, :1] - 0.5) + 0.0 * logits


def build(name: str, cell_like: bool) -> torch.nn.Module:
    if name == "none":
        return PixelSigmoid()
    from celltune.models import create_model

    net = create_model(name, in_channels=1, head="binary", weights="none")
    return CellLikeOutput(net) if cell_like else net


def run_pipeline(predictor: Predictor, image: np.ndarray, instances: str) -> None:
    import tempfile
    from pathlib import Path

    from celltune.inference.batch import predict_files
    from celltune.io import write_tiff

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiff(Path(tmp) / "large.tif", image)
        del image
        start = time.perf_counter()
        result = predict_files(
            predictor, [path], Path(tmp) / "out", instances=instances, progress=False
        )
        seconds = time.perf_counter() - start
    row = result.images[0]
    print(
        f"pipeline (read, predict, {instances} instances, write): {seconds:.1f} s, "
        f"{row.cells} cells; peak RSS {peak_rss_mib():.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()  # as `celltune predict` does when it starts
    baseline = peak_rss_mib()
    image = synthetic_image(args.size, args.seed)
    torch.manual_seed(args.seed)  # the untrained weights decide the mask, so fix them too
    model = build(args.model, cell_like=not args.raw_output)
    predictor = Predictor(
        model, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device="cpu"
    )
    tiles = predictor.tile_count(*image.shape)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); image {args.size}x{args.size} uint16 "
        f"({image.nbytes / 2**20:.0f} MiB); model {args.model}; tile {args.tile}, overlap "
        f"{args.overlap}, batch {args.batch_size}: {tiles} tiles"
    )
    print(
        f"peak RSS after imports: {baseline:.0f} MiB; with image and model: "
        f"{peak_rss_mib():.0f} MiB"
    )

    if args.pipeline:
        run_pipeline(predictor, image, args.instances)
        return
    start = time.perf_counter()
    result = predictor.predict(image)
    seconds = time.perf_counter() - start
    print(
        f"predict: {seconds:.1f} s ({tiles / seconds:.2f} tiles/s, "
        f"{args.size**2 / seconds / 1e6:.2f} Mpixel/s); peak RSS {peak_rss_mib():.0f} MiB; "
        f"foreground {result.mask.mean():.3f}"
    )

    if args.instances != "none":
        # The labelling `celltune predict` uses: tiled above 4 Mpx, bounded by one window.
        from celltune.inference.files import label_in_bands

        mask = result.mask
        del result, image
        start = time.perf_counter()
        labels = label_in_bands(mask, args.instances, min_size=16)
        print(
            f"instances ({args.instances}): {time.perf_counter() - start:.1f} s, "
            f"{int(labels.max())} cells; peak RSS {peak_rss_mib():.0f} MiB"
        )


if __name__ == "__main__":
    main()
