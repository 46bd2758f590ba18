"""Quality benchmark: celltune's default CPU recipe versus a plain SMP training loop.

Both get the same wall-clock budget on the same images of a real fluorescence-nuclei dataset
(Coelho et al., ISBI 2009; ../shared/data/coelho2009_u2os_nih3t3): names sorted, the last 20
images are the test set, the 10 before them validation, the rest training. Both are scored
on the test images with the same metric code (per-image Dice and IoU, then the mean).

The plain loop is SMP written the obvious way: U-Net ResNet34 (no pretrained weights, as
celltune's offline default), Adam 1e-3, BCE + Dice, random 256x256 crops with flips, batch 8,
images scaled by /255, the last weights, threshold 0.5, no validation.

Usage:
    python benchmarks/quality.py --minutes 15 --out BENCHMARKS.md
    python benchmarks/quality.py --minutes 0.5 --limit 12       # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from celltune.config import RunConfig
from celltune.data.neurips import discover
from celltune.data.samples import Sample, Splits
from celltune.evaluation.metrics import confusion, dice, iou
from celltune.io import read_image, read_label, to_binary, to_channels

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coelho2009_u2os_nih3t3"
SECTION = ("<!-- quality:start -->", "<!-- quality:end -->")


def coelho_splits(root: Path, limit: int | None = None) -> Splits:
    samples = sorted(discover(root).all_samples(), key=lambda s: s.name)
    if limit:
        samples = samples[:limit]
    n_test, n_val = (20, 10) if not limit else (max(2, limit // 5), max(2, limit // 10))
    return Splits(
        train=samples[: -(n_test + n_val)],
        val=samples[-(n_test + n_val) : -n_test],
        test=samples[-n_test:],
    )


# --- celltune -------------------------------------------------------------------------------
def run_celltune(root: Path, splits: Splits, minutes: float, out: Path) -> dict[str, float]:
    from celltune.workflows.run import run_pipeline

    config = RunConfig.model_validate(
        {
            "name": "celltune",
            "data": {"root": str(root), "filter": "all", "channels": 1},
            "train": {"max_time": minutes, "epochs": 1000},
        }
    )
    result = run_pipeline(config, out / "celltune", splits=splits, progress=False)
    s = result.summary
    # Training minutes: fit() with its validations, without the threshold sweep and the test
    # evaluation that follow (the plain loop's test pass is not counted either).
    return {
        "dice": s["dice"],
        "iou": s["iou"],
        "threshold": result.threshold,
        "minutes": result.train_seconds / 60,
    }


# --- the plain loop -------------------------------------------------------------------------
def _load_plain(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image = to_channels(read_image(sample.image), 1)[..., 0] / 255.0
    mask = to_binary(read_label(sample.label)).astype(np.float32)
    return image.astype(np.float32), mask


def _plain_batch(data: list, rng: np.random.Generator, batch: int = 8, crop: int = 256):
    xs, ys = [], []
    for _ in range(batch):
        image, mask = data[rng.integers(len(data))]
        y0 = rng.integers(0, image.shape[0] - crop + 1)
        x0 = rng.integers(0, image.shape[1] - crop + 1)
        x, y = image[y0 : y0 + crop, x0 : x0 + crop], mask[y0 : y0 + crop, x0 : x0 + crop]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        xs.append(x.copy())
        ys.append(y.copy())
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def run_plain(splits: Splits, minutes: float) -> dict[str, float]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bce, dice_loss = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary")
    train = [_load_plain(s) for s in splits.train]
    started = time.monotonic()
    steps = 0
    model.train()
    while time.monotonic() - started < minutes * 60:
        x, y = _plain_batch(train, rng)
        logits = model(x)
        loss = bce(logits, y) + dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    train_minutes = (time.monotonic() - started) / 60
    model.eval()
    dices, ious = [], []
    with torch.no_grad():
        for sample in splits.test:
            image, mask = _load_plain(sample)
            h, w = image.shape
            ph, pw = -h % 32, -w % 32
            x = torch.from_numpy(np.pad(image, ((0, ph), (0, pw)), mode="reflect"))[None, None]
            prob = torch.sigmoid(model(x))[0, 0, :h, :w].numpy()
            counts = confusion(prob >= 0.5, mask > 0)
            dices.append(dice(counts))
            ious.append(iou(counts))
    return {
        "dice": float(np.mean(dices)),
        "iou": float(np.mean(ious)),
        "threshold": 0.5,
        "minutes": train_minutes,
        "steps": steps,
    }


def markdown(results: dict[str, dict[str, float]], args: argparse.Namespace, n: dict) -> str:
    lines = [
        SECTION[0],
        "## Quality: celltune default CPU recipe vs a plain SMP loop (same budget)",
        "",
        f"Data: Coelho 2009 U2OS/NIH3T3 nuclei, {n['train']} train / {n['val']} val / "
        f"{n['test']} test images (sorted names; last 20 test, 10 before them validation).",
        f"Budget: {args.minutes:g} min of training each, run one after the other in one process.",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, {date.today().isoformat()}.",
        f"Command: `python benchmarks/quality.py --minutes {args.minutes:g}`",
        "",
        "| recipe | test Dice | test IoU | threshold | training minutes |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['dice']:.3f} | {r['iou']:.3f} | {r['threshold']:.2f} | "
            f"{r['minutes']:.1f} |"
        )
    lines += ["", SECTION[1]]
    return "\n".join(lines)


def update_section(path: Path, text: str) -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if SECTION[0] in old and SECTION[1] in old:
        head, rest = old.split(SECTION[0], 1)
        tail = rest.split(SECTION[1], 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget each")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--work", type=Path, default=None, help="keep the celltune run here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: dataset not found", file=sys.stderr)
        return 1
    splits = coelho_splits(args.data, args.limit)
    work = args.work or Path(tempfile.mkdtemp(prefix="celltune-quality-"))
    results = {
        "celltune (default CPU recipe)": run_celltune(args.data, splits, args.minutes, work),
        "plain SMP loop": run_plain(splits, args.minutes),
    }
    text = markdown(results, args, splits.counts())
    print(text)
    print(json.dumps(results, indent=1))
    if args.out:
        update_section(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
