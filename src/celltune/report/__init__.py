"""The study report: results model (rows, table, paired comparisons), text and HTML renderers,
figures, and the writer that puts them in a study folder.

Example:
    >>> from celltune.report import regenerate
    >>> report = regenerate("studies/demo")                  # doctest: +SKIP
    >>> [row.label for row in report.results]                # doctest: +SKIP
    ['U-Net (ResNet34)', ...]
"""

from celltune.report.results import (
    PaperNumbers,
    RowResult,
    collect,
    paired_comparisons,
    read_row,
    results_table,
    study_meta,
)
from celltune.report.writer import StudyReport, regenerate, render_console, write_results

__all__ = [
    "PaperNumbers",
    "RowResult",
    "StudyReport",
    "collect",
    "paired_comparisons",
    "read_row",
    "regenerate",
    "render_console",
    "results_table",
    "study_meta",
    "write_results",
]
