"""Retrain one row of a finished ``celltune demo`` with recipe changes, on the row's own split.

Each variant is the row's saved ``config.yaml`` with a few settings changed; every variant and
seed trains on exactly the row's train / validation / test images (its ``splits.json``), so
the only differences are the change and the seed. Prints the tuned instance step's validation
F1 and the test Dice / F1@0.5 of each run (BENCHMARKS.md, "The synthetic demo's F1")::

    OMP_NUM_THREADS=1 python benchmarks/demo_variants.py celltune-demo/unet --out demo-trials \\
        --variant plain --variant 'gaps={"train": {"gaps": true}}' --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, overrides = text.partition("=")
    return name, json.loads(overrides) if overrides else {}


def main() -> None:
    from celltune.config import RunConfig, deep_merge
    from celltune.data.samples import Sample, Splits
    from celltune.workflows.run import run_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a demo row's run folder, e.g. celltune-demo/unet")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", action="append", type=_variant, required=True,
                        help="NAME or NAME={json overrides of the row's config}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-time", type=float, default=10.0,
                        help="minutes per run: high enough that every epoch finishes")
    args = parser.parse_args()

    base = yaml.safe_load((args.run / "config.yaml").read_text(encoding="utf-8"))
    base.pop("celltune", None)
    saved = json.loads((args.run / "splits.json").read_text(encoding="utf-8"))
    splits = Splits(**{k: [Sample(Path(s["image"]), Path(s["label"])) for s in saved[k]]
                       for k in ("train", "val", "test")})
    for name, overrides in args.variant:
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = args.out / f"{name}-seed{seed}"
            cfg = deep_merge(base, {"name": folder.name, "eval": {"bootstrap": 0},
                                    "train": {"seed": seed, "max_time": args.max_time}})
            started = time.monotonic()
            result = run_pipeline(RunConfig.model_validate(deep_merge(cfg, overrides)), folder,
                                  overwrite=True, progress=False, splits=splits)
            step = json.loads((folder / "postprocess.json").read_text(encoding="utf-8"))
            s = result.summary
            print(f"{name} seed {seed}: validation F1 {step['best_f1']:.3f} ({step['best']}), "
                  f"test Dice {s['dice']:.3f} F1@0.5 {s['f1_iou50']:.3f}, threshold "
                  f"{result.threshold:.2f}, {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
