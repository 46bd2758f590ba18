"""Recipe trials: does a change to celltune's default recipe win on the development sets?

Trains celltune's recipe with one change (a *variant*) on a dataset's saved benchmark split,
with the benchmark's budget and seeds, and compares it, paired on the same test images, with
the other variants tried and with the recipes of an earlier ``celltune bench`` folder (the
recipe before the change, the plain SMP loop). The decision rule is BENCHMARKS.md's: a change
is kept when it is better (interval over images and seeds above 0, Holm p < 0.05, ranks agree)
on at least two of the three development sets and significantly worse on none.

Train (one variant, one dataset; one torch thread per process, as in the benchmark)::

    OMP_NUM_THREADS=1 python benchmarks/recipe_trials.py train ../shared/data/ctc_msc \\
        --split benchmarks/splits/ctc_msc.json --out trials/ctc_msc --variant batch4

Compare (every variant trained under ``--out``, with the ``--baseline`` bench folder)::

    python benchmarks/recipe_trials.py compare --out trials/ctc_msc --baseline bench/ctc_msc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

#: The network training derives for a from-scratch U-Net on a CPU budget (written out, so that
#: the variant means the same network when the rule is off).
_LIGHT = {"encoder": "resnet18", "options": {"decoder_channels": [128, 64, 32, 16, 8]}}

#: Each variant: overrides of the celltune recipe's RunConfig, and which of the data settings
#: that are only proposed today (celltune.data.derive.PROPOSED_FIELDS) training derives too.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"overrides": {}},
    "batch4": {"overrides": {"train": {"batch_size": 4}}},
    "derived": {"overrides": {}, "derive": ("channels", "crop", "foreground_sampling")},
    "channels": {"overrides": {}, "derive": ("channels",)},
    "fgcrop": {"overrides": {}, "derive": ("crop", "foreground_sampling")},
    "rescale": {"overrides": {}, "derive": ("resize",)},
    "lr2e-3": {"overrides": {"train": {"lr": 2e-3}}},
    "aug1": {"overrides": {"train": {"aug": "aug1"}}},
    "gaps": {"overrides": {"train": {"gaps": True}}},
    "boundary": {"overrides": {"model": {"head": "boundary"}}},
    "distance": {"overrides": {"model": {"head": "distance"}}},
    "light": {"overrides": {"model": _LIGHT}},
    "light-batch4": {"overrides": {"model": _LIGHT, "train": {"batch_size": 4}}},
    "light-channels": {"overrides": {"model": _LIGHT}, "derive": ("channels",)},
    "light-batch4-aug1": {"overrides": {"model": _LIGHT,
                                        "train": {"batch_size": 4, "aug": "aug1"}}},
}


def train(args: argparse.Namespace) -> None:
    from celltune.data import derive
    from celltune.workflows.bench import BenchSettings, run_training
    from celltune.workflows.bench_split import prepare_split

    spec = VARIANTS[args.variant]
    if spec.get("derive"):
        # The trial of proposed rules: training derives them like the applied ones.
        derive.DERIVED_FIELDS = (*derive.DERIVED_FIELDS, *spec["derive"])
    # Another recipe (more seeds of the plain loop) trains into the bench folder itself.
    out = Path(args.out) / args.variant if args.recipe == "celltune" else Path(args.out)
    root = Path(args.data).expanduser().resolve()
    splits, _ = prepare_split(root, out, split_file=args.split)
    # celltune@untuned scores the same network with the instance step's defaults.
    # celltune@tta scores it with test-time flips (threshold chosen again on validation).
    settings = BenchSettings(minutes=args.minutes, celltune=spec["overrides"],
                             untuned_instances=True, tta_variant=args.tta)
    for seed in [int(s) for s in args.seeds.split(",")]:
        record = run_training(args.recipe, seed, splits, root, out, settings,
                              keep_checkpoints=args.keep_checkpoints)
        scores = ", ".join(
            f"{v} Dice {np.mean([r['dice'] for r in rows]):.3f} "
            f"F1 {np.mean([r['f1'] for r in rows]):.3f}"
            for v, rows in record["scores"].items())
        print(f"{args.recipe} {args.variant} seed {seed}: {scores}, trained "
              f"{record['train_seconds'] / 60:.2f} min", flush=True)


def _records(folder: Path, recipe: str, rename: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path in sorted((folder / "runs" / recipe).glob("seed*/scores.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["variants"] = [rename.get(v, v) for v in record["variants"]]
        record["scores"] = {rename.get(v, v): rows for v, rows in record["scores"].items()}
        out.append(record)
    return out


def compare_variants(args: argparse.Namespace) -> None:
    from celltune.workflows.bench_report import compare, summarize

    out, base = Path(args.out), Path(args.baseline)
    records = _records(base, "celltune", {"celltune": "before"})
    records += _records(base, "plain_smp", {})
    records += _records(base, "cellpose", {})
    records = [r for r in records if "plain_smp@0.5" not in r["variants"]] + [
        {**r, "variants": ["plain_smp@val"]} for r in records if "plain_smp@0.5" in r["variants"]]
    for variant in VARIANTS:
        records += _records(out / variant, "celltune",
                            {"celltune": variant, "celltune@untuned": f"{variant}@untuned",
                             "celltune@tta": f"{variant}@tta"})
    names = [row["name"] for row in next(iter(records[0]["scores"].values()))]
    summary = summarize(records, names)
    print("| variant | test Dice | test F1@0.5 | training min | seeds |\n|---|---|---|---|---|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['dice']['mean']:.3f} ({s['dice']['min']:.3f}-"
              f"{s['dice']['max']:.3f}) | {s['f1']['mean']:.3f} | {s['train_minutes']:.1f} | "
              f"{s['seeds']} |")
    print("\n| A - B | metric | mean diff | 95% interval | Holm p | better |\n|---|---|---|---|---|---|")
    for pair in compare(records, names):
        if pair["a"] in ("before", "plain_smp@val") and pair["b"] in ("before", "plain_smp@val"):
            continue
        print(f"| {pair['a']} - {pair['b']} | {pair['metric']} | {pair['mean_diff']:+.3f} | "
              f"[{pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}] | {pair['p_holm']:.3g} | "
              f"{pair.get(pair['better'], pair['better'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one variant with every seed")
    t.add_argument("data")
    t.add_argument("--split", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--variant", choices=list(VARIANTS), default="default")
    t.add_argument("--recipe", default="celltune",
                   help="celltune (the variant), or plain_smp to add seeds to a bench folder")
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--minutes", type=float, default=3.0)
    t.add_argument("--tta", action="store_true",
                   help="also score each network with test-time flips (celltune@tta)")
    t.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the trained weights (to score other inference steps later)")
    c = sub.add_parser("compare", help="compare the variants trained so far")
    c.add_argument("--out", required=True)
    c.add_argument("--baseline", required=True)
    args = parser.parse_args()
    (train if args.command == "train" else compare_variants)(args)


if __name__ == "__main__":
    main()
