"""Retrain one row of a finished ``celltune demo`` with recipe changes, on the row's own split.

Each variant is the row's saved ``config.yaml`` with a few settings changed; every variant and
seed trains on exactly the row's train / validation / test images (its ``splits.json``), so
the only differences are the change and the seed. Prints the tuned instance step's validation
F1 and the test Dice / F1@0.5 of each run (BENCHMARKS.md, "The synthetic demo's F1")::

    OMP_NUM_THREADS=1 python benchmarks/demo_variants.py celltune-demo/unet --out demo-trials \\
        --variant plain --variant 'gaps={"train": {"gaps": true}}' --seeds 0,1

Decisions are not made on the demo's test images. ``--dev-seed S`` scores each run instead
on fresh synthetic images drawn with generator seed ``S`` (48 images, the demo's size: the
same distribution, none of them in the demo), and then the test split is not evaluated at
all unless ``--test`` is given. ``--val N`` draws N validation images instead of the row's
(from the same pool with the row's seed, so the test images stay the same; checked).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, overrides = text.partition("=")
    return name, json.loads(overrides) if overrides else {}


def _splits(run: Path, val: int | None, base: dict[str, Any]) -> Any:
    from celltune.config import RunConfig
    from celltune.data.neurips import make_splits
    from celltune.data.samples import Sample, Splits

    saved = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    splits = Splits(**{k: [Sample(Path(s["image"]), Path(s["label"])) for s in saved[k]]
                       for k in ("train", "val", "test")})
    if val is None:
        return splits
    cfg = RunConfig.model_validate(base)
    redrawn = make_splits(cfg.data.model_copy(update={"val": val}), seed=cfg.train.seed)
    if [s.image for s in redrawn.test] != [s.image for s in splits.test]:
        raise SystemExit("--val changed the test images; the row's split cannot be kept")
    return redrawn


def _dev_scores(folder: Path, dev: Path) -> tuple[float, float, dict[str, float]]:
    """Mean Dice, mean F1@0.5 and F1 per modality of a finished run on a synthetic set."""
    from celltune.evaluation.metrics import confusion, dice, instance_scores
    from celltune.inference.predict import Predictor
    from celltune.io import read_image, read_label

    predictor = Predictor.from_run(folder)
    dices, f1s, by_modality = [], [], {}
    for record in json.loads((dev / "synthetic.json").read_text(encoding="utf-8"))["images"]:
        truth = read_label(dev / record["label"])
        cells = predictor.predict_instances(read_image(dev / record["image"]))
        dices.append(dice(confusion(cells > 0, truth > 0)))
        f1s.append(instance_scores(truth, cells, [0.5])["f1"][0])
        by_modality.setdefault(record["modality"], []).append(f1s[-1])
    return (float(np.mean(dices)), float(np.mean(f1s)),
            {k: float(np.mean(v)) for k, v in sorted(by_modality.items())})


def main() -> None:
    from celltune.config import RunConfig, deep_merge
    from celltune.data.synthetic import ensure_dataset
    from celltune.workflows.run import run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a demo row's run folder, e.g. celltune-demo/unet")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", action="append", type=_variant, required=True,
                        help="NAME or NAME={json overrides of the row's config}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-time", type=float, default=10.0,
                        help="minutes per run: high enough that every epoch finishes")
    parser.add_argument("--val", type=int, default=None,
                        help="validation images (default: the row's own validation split)")
    parser.add_argument("--dev-seed", type=int, default=None,
                        help="score on fresh synthetic images of this generator seed")
    parser.add_argument("--test", action="store_true",
                        help="with --dev-seed: evaluate the test split as well")
    args = parser.parse_args()

    base = yaml.safe_load((args.run / "config.yaml").read_text(encoding="utf-8"))
    base.pop("celltune", None)
    splits = _splits(args.run, args.val, base)
    dev = None
    if args.dev_seed is not None:
        dev = args.out / f"dev-seed{args.dev_seed}"
        ensure_dataset(dev, n=48, size=256, seed=args.dev_seed)
    for name, overrides in args.variant:
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = args.out / f"{name}-seed{seed}"
            cfg = deep_merge(base, {"name": folder.name, "eval": {"bootstrap": 0},
                                    "train": {"seed": seed, "max_time": args.max_time}})
            started = time.monotonic()
            result = run_pipeline(RunConfig.model_validate(deep_merge(cfg, overrides)), folder,
                                  overwrite=True, progress=False, splits=splits,
                                  evaluate_split="test" if dev is None or args.test else None)
            seconds = time.monotonic() - started
            step = json.loads((folder / "postprocess.json").read_text(encoding="utf-8"))
            line = (f"{name} seed {seed}: validation F1 {step['best_f1']:.3f} ({step['best']}), "
                    f"threshold {result.threshold:.2f}, {seconds:.0f} s")
            if dev is not None:
                dice, f1, by_modality = _dev_scores(folder, dev)
                line += (f"; dev Dice {dice:.3f} F1@0.5 {f1:.3f} ("
                         + ", ".join(f"{k} {v:.3f}" for k, v in by_modality.items()) + ")")
            if dev is None or args.test:
                s = result.summary
                line += f"; test Dice {s['dice']:.3f} F1@0.5 {s['f1_iou50']:.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
