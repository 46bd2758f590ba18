"""``report.html``: one self-contained page (inline CSS, figures as base64 PNG, no links out).

Every piece of text from run folders that reaches the page passes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from celltune import __version__
from celltune.report.results import PaperNumbers, RowResult, paired_comparisons, results_table
from celltune.report.text import conventions, display_comparisons, display_table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2125;
       max-width: 1400px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem; }
.meta { color: #57606a; font-size: 0.9rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.82rem; }
td:first-child { min-width: 8rem; }
.ci { color: #57606a; font-size: 0.8rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.4rem; }
th { background: #f3f5f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
tr.best td { font-weight: 600; background: #eef7ee; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: 0.88rem; margin-top: 0.4rem; }
dl dt { font-weight: 600; margin-top: 0.6rem; }
dl dd { margin-left: 1.2rem; }
.note { color: #8a4b08; }
"""

_FIGURES = (
    (
        "loss",
        "Training curves",
        "Train (solid) and validation (dashed) loss, and validation "
        "Dice at threshold 0.5, per epoch.",
    ),
    (
        "threshold",
        "Dice versus threshold",
        "Mean validation Dice at each probability threshold; a star marks the chosen threshold.",
    ),
    (
        "masks",
        "Mask comparison",
        "Test images chosen deterministically (hardest first, then "
        "median, then easiest by mean Dice across models). Prediction panels: white = true "
        "positive, magenta = false positive, cyan = false negative, black = true negative.",
    ),
)
# Right-aligned (numeric) columns of the results and comparison tables.
_RESULT_TEXT_COLUMNS = 4
_COMPARISON_NUMERIC = (2, 3, 4, 5, 7, 8)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num_cell(text: str) -> str:
    """A right-aligned cell; an interval ``"v [lo, hi]"`` goes on a second, smaller line."""
    value, sep, interval = str(text).partition(" [")
    second = f'<br><span class="ci">[{_e(interval)}</span>' if sep else ""
    return f'<td class="num">{_e(value)}{second}</td>'


def _table(
    headers: Sequence[str],
    cells: Sequence[Sequence[str]],
    numeric: Collection[int],
    highlight: int | None = None,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(cells):
        tds = "".join(
            _num_cell(c) if j in numeric else f"<td>{_e(c)}</td>" for j, c in enumerate(row)
        )
        cls = ' class="best"' if i == highlight else ""
        body.append(f"<tr{cls}>{tds}</tr>")
    rows = "".join(body)
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _figure(title: str, caption: str, png: bytes | None, missing: str | None) -> str:
    if png is None:
        return f'<h2>{_e(title)}</h2><p class="note">Not drawn: {_e(missing or "no data")}.</p>'
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<h2>{_e(title)}</h2><figure><img src="data:image/png;base64,{data}" '
        f'alt="{_e(title)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _comparison_section(results: Sequence[RowResult]) -> str:
    if len(results) < 2:
        return ""
    parts = [
        "<h2>Paired comparison</h2>",
        "<p>Each row against the row with the highest mean test Dice, on the test images "
        "both scored. <em>Higher</em> names the row with the higher mean. A difference is "
        "called significant only when the bootstrap 95% interval of the mean difference "
        "excludes 0, the two-sided Wilcoxon signed-rank p-value, Holm-adjusted over the "
        "comparisons in the table, is below 0.05, and the signed ranks agree with the "
        "interval. The best row was picked on these test images, so read a non-significant "
        "result as a tie.</p>",
        _table(*display_comparisons(paired_comparisons(results)), _COMPARISON_NUMERIC),
    ]
    if len(results) > 2:
        parts += [
            "<details><summary>All pairs</summary>",
            _table(
                *display_comparisons(paired_comparisons(results, against="all")),
                _COMPARISON_NUMERIC,
            ),
            "</details>",
        ]
    return "".join(parts)


def _failures(results: Sequence[RowResult]) -> str:
    items = [
        f"<li>{_e(r.label)}: {_e(f.get('name', '?'))} — {_e(f.get('error', ''))}</li>"
        for r in results
        for f in r.summary.get("failures") or []
    ]
    if not items:
        return ""
    return (
        "<h2>Images that could not be evaluated</h2><p>They are left out of the scores "
        f"of their row.</p><ul>{''.join(items)}</ul>"
    )


def render_html(
    results: Sequence[RowResult],
    title: str,
    figures: Mapping[str, bytes],
    missing: Mapping[str, str] | None = None,
    paper: PaperNumbers | None = None,
    description: str = "",
) -> str:
    """The full page: results table, conventions, figures, paired comparison, failures.

    Args:
        results: Rows of the study.
        title: Page title.
        figures: Figure key (``loss``, ``threshold``, ``masks``) -> PNG bytes.
        missing: Figure key -> why it was not drawn.
        paper: Optional row -> published ``threshold``/``dice``/``iou``, shown as extra columns.
        description: Optional paragraph under the title.
    """
    missing = missing or {}
    table = results_table(results, paper)
    headers, cells = display_table(table)
    best = max(range(len(table)), key=lambda i: (table[i]["dice"], -i)) if table else None
    n_images = sorted({t["n_images"] for t in table})
    meta = (
        f"{len(results)} row(s); test images per row: {', '.join(map(str, n_images))}. "
        f"Generated by celltune {__version__}."
    )
    convention_items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in conventions(results))
    paper_note = (
        "<p>Paper columns: the published numbers of the reproduced study, for comparison.</p>"
        if paper
        else ""
    )
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(description.strip())}</p>" if description.strip() else "",
        f'<p class="meta">{_e(meta)}</p>',
        "<h2>Results on the test split</h2>",
        _table(headers, cells, range(_RESULT_TEXT_COLUMNS, len(headers)), highlight=best),
        paper_note,
        "<h2>How the numbers are computed</h2>",
        f"<dl>{convention_items}</dl>",
        *(_figure(t, c, figures.get(k), missing.get(k)) for k, t, c in _FIGURES),
        _comparison_section(results),
        _failures(results),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
