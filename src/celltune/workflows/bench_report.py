"""The benchmark's numbers: per-recipe summaries over seeds, paired comparisons, the markdown."""

from __future__ import annotations

from typing import Any

import numpy as np

from celltune.evaluation.stats import decide, paired_tests, seed_image_interval
from celltune.workflows.bench_jobs import BenchResult

METRICS = ("dice", "iou", "f1")
PAIRED_METRICS = ("dice", "f1")


def _matrix(records: list[dict[str, Any]], variant: str, metric: str, names: list[str]):
    """``(seeds, images)`` scores of one variant, images in the order of ``names``."""
    rows = []
    for record in records:
        by_name = {r["name"]: r[metric] for r in record["scores"].get(variant, [])}
        if by_name:
            rows.append([by_name[n] for n in names])
    return np.asarray(rows, dtype=np.float64)


def summarize(records: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per variant and metric: mean over seeds of the test means, min, max and std."""
    variants = list(dict.fromkeys(v for r in records for v in r["variants"]))
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        entry: dict[str, Any] = {}
        for metric in METRICS:
            per_seed = _matrix(records, variant, metric, names).mean(axis=1)
            entry[metric] = {
                "mean": float(per_seed.mean()), "min": float(per_seed.min()),
                "max": float(per_seed.max()),
                "std": float(per_seed.std(ddof=1)) if per_seed.size > 1 else 0.0,
                "per_seed": per_seed.tolist(),
            }
        seconds = [r["train_seconds"] for r in records if variant in r["variants"]]
        entry["train_minutes"] = float(np.mean(seconds) / 60)
        entry["seeds"] = len(seconds)
        out[variant] = entry
    return out


def compare(records: list[dict[str, Any]], names: list[str], alpha: float = 0.05,
            n_boot: int = 4000) -> list[dict[str, Any]]:
    """Every pair of variants (the first variant's pairs first) on Dice and F1, Holm-adjusted
    over all comparisons returned."""
    variants = list(dict.fromkeys(v for r in records for v in r["variants"]))
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1 :]]
    jobs = [(a, b, m) for m in PAIRED_METRICS for a, b in pairs]
    mats = {(v, m): _matrix(records, v, m, names) for v in variants for m in PAIRED_METRICS}
    tests = paired_tests(
        [(mats[a, m].mean(axis=0), mats[b, m].mean(axis=0)) for a, b, m in jobs], n=n_boot
    )
    out = []
    for (a, b, metric), test in zip(jobs, tests, strict=True):
        mean, low, high = seed_image_interval(mats[a, metric], mats[b, metric], n=n_boot)
        out.append({
            "a": a, "b": b, "metric": metric, "n_images": len(names), "mean_diff": mean,
            "ci_low": low, "ci_high": high, "wilcoxon_p": test["wilcoxon_p"],
            "p_holm": test["p_holm"], "rank_direction": test["rank_direction"],
            "better": decide(low, high, test["p_holm"], test["rank_direction"], alpha),
        })
    return out


def _cell(entry: dict[str, float]) -> str:
    return f"{entry['mean']:.3f} ({entry['min']:.3f}-{entry['max']:.3f})"


def render_markdown(result: BenchResult) -> str:
    """Per-recipe table (mean over seeds, min-max over seeds) and the paired table."""
    c, s, m = result.split["counts"], result.settings, result.machine
    lines = [
        f"Data: `{result.data_root}`, {c['train']} train / {c['val']} validation / "
        f"{c['test']} test images; split: {result.split['rule']}.",
        f"Budget: {s['minutes']:g} min of training per run, {len(result.seeds)} seeds "
        f"({', '.join(map(str, result.seeds))}), runs one after another on one machine.",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}, GPU: {'yes' if m['gpu'] else 'no'}, cellpose {m['cellpose']}; "
        f"{result.date}.",
    ]
    if result.command:
        lines.append(f"Command: `{result.command}`")
    lines += ["", "| recipe | test Dice | test IoU | test F1@0.5 | training min | seeds |",
              "|---|---|---|---|---|---|"]
    for variant, e in result.summary.items():
        lines.append(f"| {variant} | {_cell(e['dice'])} | {_cell(e['iou'])} | {_cell(e['f1'])}"
                     f" | {e['train_minutes']:.1f} | {e['seeds']} |")
    lines += ["", "Mean over seeds of the per-seed test means (min-max over seeds).", "",
              "| A - B | metric | mean diff | 95% interval (images x seeds) | Wilcoxon p | "
              "Holm p | better |", "|---|---|---|---|---|---|---|"]
    for p in result.pairs:
        better = {"a": p["a"], "b": p["b"]}.get(p["better"], "neither")
        lines.append(f"| {p['a']} - {p['b']} | {p['metric']} | {p['mean_diff']:+.3f} | "
                     f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | {p['wilcoxon_p']:.3g} | "
                     f"{p['p_holm']:.3g} | {better} |")
    lines += ["", "Interval: bootstrap over test images (paired) and, per recipe, over seeds. "
              "Wilcoxon: signed-rank test of the seed-averaged per-image differences; Holm "
              f"over the {len(result.pairs)} comparisons of this table. A recipe is better "
              "only when the interval excludes 0, Holm p < 0.05 and the ranks agree.",
              "", "Training minutes as each recipe measures them: celltune's fit (image "
              "loading, epochs, validations), the plain loop's steps, Cellpose's train_seg "
              "(flows and batch timing are computed before it)."]
    return "\n".join(lines) + "\n"
