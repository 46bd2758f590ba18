"""Text rendering of the study report: cell formatting, ``results.md``, ``results.csv`` and
the terminal table. ``report.html`` is rendered by :mod:`celltune.report.html`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from celltune.evaluation.metrics import EMPTY_RULE
from celltune.evaluation.threshold import CONVENTION, CRITERION
from celltune.report.results import (
    PaperNumbers,
    RowResult,
    paired_comparisons,
    results_table,
)

CSV_COLUMNS = (
    "row",
    "label",
    "model",
    "weights",
    "aug",
    "head",
    "threshold",
    "n_images",
    "dice",
    "dice_ci_low",
    "dice_ci_high",
    "iou",
    "iou_ci_low",
    "iou_ci_high",
    "dice_pooled",
    "iou_pooled",
    "f1_iou50",
    "f1_mean_50_90",
    "f1_iou50_median",
    "precision_iou50",
    "recall_iou50",
    "count_error_relative",
    "params",
    "train_seconds",
)
PAPER_COLUMNS = ("paper_threshold", "paper_dice", "paper_iou")


def fmt_num(value: Any, digits: int = 3) -> str:
    """A score with ``digits`` decimals; missing or NaN values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def fmt_percent(value: Any) -> str:
    """A fraction as a whole percentage; missing or NaN values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.0f}%"


def fmt_paper(value: Any) -> str:
    """A published value: numbers to two decimals, text (e.g. "two classes") as given."""
    return value if isinstance(value, str) else fmt_num(value, 2)


def fmt_params(n: int | None) -> str:
    """A parameter count in millions (or thousands for tiny models)."""
    if n is None:
        return "–"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def fmt_seconds(seconds: float | None) -> str:
    """A duration in seconds, minutes or hours, whichever reads best."""
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def fmt_p(p: float) -> str:
    """A p-value: three decimals, or two significant digits below 0.001."""
    return "–" if math.isnan(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def display_table(table: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of :func:`results_table` rows (for md, html, console)."""
    headers = [
        "Row",
        "Model",
        "Weights",
        "Aug",
        "Threshold",
        "Dice (95% CI)",
        "IoU (95% CI)",
        "Pooled Dice",
        "F1@0.5",
        "F1@0.5:0.9",
        "Count error",
        "Params",
        "Train time",
    ]
    with_ref = bool(table) and "paper_dice" in table[0]
    if with_ref:
        headers += ["Paper threshold", "Paper Dice", "Paper IoU"]
    cells = []
    for t in table:
        thr = t["threshold"] if isinstance(t["threshold"], str) else fmt_num(t["threshold"], 2)
        row = [
            t["label"],
            t["model"],
            Path(t["weights"]).name,  # a weights file is shown by its name
            t["aug"],
            thr,
            f"{fmt_num(t['dice'])} [{fmt_num(t['dice_ci_low'])}, {fmt_num(t['dice_ci_high'])}]",
            f"{fmt_num(t['iou'])} [{fmt_num(t['iou_ci_low'])}, {fmt_num(t['iou_ci_high'])}]",
            fmt_num(t["dice_pooled"]),
            fmt_num(t["f1_iou50"]),
            fmt_num(t.get("f1_mean_50_90")),
            fmt_percent(t.get("count_error_relative")),
            fmt_params(t["params"]),
            fmt_seconds(t["train_seconds"]),
        ]
        if with_ref:
            row += [fmt_paper(t["paper_threshold"])]
            row += [fmt_num(t["paper_dice"], 2), fmt_num(t["paper_iou"], 2)]
        cells.append(row)
    return headers, cells


def display_comparisons(
    comparisons: Sequence[Mapping[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of :func:`paired_comparisons`."""
    headers = [
        "A",
        "B",
        "Images in common",
        "Mean Dice A",
        "Mean Dice B",
        "A − B (95% CI)",
        "Higher",
        "Wilcoxon p",
        "Holm p",
        "Significant",
    ]
    cells = []
    for c in comparisons:
        common = str(c["n_common"])
        if c["n_only_a"] or c["n_only_b"]:
            common += f" (+{c['n_only_a']} only A, +{c['n_only_b']} only B)"
        cells.append(
            [
                c["a"],
                c["b"],
                common,
                fmt_num(c["mean_a"]),
                fmt_num(c["mean_b"]),
                f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
                c["higher"],
                fmt_p(c["wilcoxon_p"]),
                fmt_p(c["p_holm"]),
                "yes" if c["significant"] else "no",
            ]
        )
    return headers, cells


def conventions(results: Sequence[RowResult]) -> list[tuple[str, str]]:
    """(topic, sentence) pairs stating how every number in the report was computed."""

    empty = next(
        (r.summary["empty_rule"] for r in results if r.summary.get("empty_rule")), EMPTY_RULE
    )
    method = next(
        (r.summary["instance_method"] for r in results if r.summary.get("instance_method")),
        "watershed",
    )
    return [
        (
            "Threshold",
            f"{CONVENTION[0].upper()}{CONVENTION[1:]}. It is chosen on the validation "
            f"split by the best {CRITERION} over a sweep; two-class heads use the argmax of the "
            "softmax (shown as 'argmax').",
        ),
        ("Empty masks", empty),
        (
            "Dice and IoU",
            "Mean of per-image scores on the test split, with 95% percentile "
            "bootstrap confidence intervals over images. Pooled Dice sums the pixel counts of all "
            "test images before scoring (micro average).",
        ),
        (
            "F1@0.5",
            "Instance F1 at IoU 0.5 (NeurIPS 2022 CellSeg rules); predicted instances "
            f"come from the mask by {method} (boundary heads: their interiors seed the cells), "
            "with the watershed depth or seed threshold and the smallest cell chosen on the "
            "validation split by F1 over all its cells (postprocess.json). F1@0.5:0.9 is the "
            "mean F1 over "
            "IoU thresholds 0.5, 0.55, ..., 0.9; count error is |predicted - true| cells summed "
            "over the test images, as a share of the true cells.",
        ),
        (
            "Paired comparison",
            "Per-image Dice differences on the test images both rows scored: a bootstrap 95% "
            "CI of the mean difference and a two-sided Wilcoxon signed-rank test, Holm-adjusted "
            "over the comparisons of the table. Significant only when the CI excludes 0, the "
            "Holm p-value is below 0.05 and the signed ranks point the same way.",
        ),
    ]


def _md_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(str(i).replace("|", "\\|") for i in items) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, cells)])


def render_markdown(
    results: Sequence[RowResult],
    title: str = "celltune study",
    paper: PaperNumbers | None = None,
    description: str = "",
) -> str:
    """The content of ``results.md``: table, comparison with the best row, conventions."""
    parts = [f"# {title}", ""] + ([description.strip(), ""] if description.strip() else [])
    parts += [_md_table(*display_table(results_table(results, paper)))]
    if len(results) > 1:
        parts += [
            "",
            "## Paired comparison with the best row (per-image Dice)",
            "",
            _md_table(*display_comparisons(paired_comparisons(results))),
        ]
    parts += ["", "## Conventions", ""]
    parts += [f"- **{topic}.** {text}" for topic, text in conventions(results)]
    return "\n".join(parts) + "\n"


def csv_text(table: Sequence[Mapping[str, Any]]) -> str:
    """The content of ``results.csv``: raw numbers of :func:`results_table` rows."""
    columns = list(CSV_COLUMNS) + (
        list(PAPER_COLUMNS) if table and "paper_dice" in table[0] else []
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow(
            {
                k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v)
                for k, v in row.items()
            }
        )
    return buf.getvalue()


#: Terminal columns left out, in this order, until the table fits the console.
_CONSOLE_OPTIONAL = ("Params", "Train", "F1@0.5", "IoU")
_CONSOLE_LABEL_WIDTH = 16


def _rich_table(table: Sequence[Mapping[str, Any]], title: str | None, skip: Sequence[str]) -> Any:

    def threshold(t: Mapping[str, Any]) -> str:
        return t["threshold"] if isinstance(t["threshold"], str) else fmt_num(t["threshold"], 2)

    def dice(t: Mapping[str, Any]) -> str:
        return f"{fmt_num(t['dice'])}\n[{fmt_num(t['dice_ci_low'])}, {fmt_num(t['dice_ci_high'])}]"

    columns: dict[str, Any] = {
        "Thresh.": threshold,
        "Dice\n(95% CI)": dice,
        "IoU": lambda t: fmt_num(t["iou"]),
        "F1@0.5": lambda t: fmt_num(t["f1_iou50"]),
        "Params": lambda t: fmt_params(t["params"]),
        "Train": lambda t: fmt_seconds(t["train_seconds"]),
    }
    if table and "paper_dice" in table[0]:
        columns["Paper\nDice"] = lambda t: fmt_num(t["paper_dice"], 2)
        columns["Paper\nIoU"] = lambda t: fmt_num(t["paper_iou"], 2)
    columns = {k: v for k, v in columns.items() if k not in skip}
    out = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    out.add_column("Row", overflow="fold")
    for header in columns:
        out.add_column(header, justify="right", no_wrap=True)
    for t in table:
        out.add_row(str(t["label"]), *(cell(t) for cell in columns.values()))
    return out


def console_table(
    table: Sequence[Mapping[str, Any]], console: Any, title: str | None = None
) -> Any:
    """A rich Table of :func:`results_table` rows that fits ``console``'s width.

    Columns of :data:`_CONSOLE_OPTIONAL` are dropped, in order, while the table (with row
    labels folded to 16 characters) is wider than the console.
    """
    longest = max((len(str(t["label"])) for t in table), default=0)
    # Labels fold, so they only need their first few characters on one line.
    spare = longest - min(longest, _CONSOLE_LABEL_WIDTH)
    unbounded = console.options.update(max_width=1_000_000)  # measure() clamps to this
    for n_skip in range(len(_CONSOLE_OPTIONAL) + 1):
        out = _rich_table(table, title, _CONSOLE_OPTIONAL[:n_skip])
        if console.measure(out, options=unbounded).maximum - spare <= console.width:
            break
    return out
