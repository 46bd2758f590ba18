"""The study report, built from a fake study folder written file by file (no training)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from celltune.config import RunConfig, save_run_config
from celltune.data.samples import Sample, Splits
from celltune.errors import RunError
from celltune.evaluation.evaluate import PER_IMAGE_COLUMNS, summarize_rows
from celltune.evaluation.threshold import ThresholdResult
from celltune.io import write_png, write_text, write_tiff
from celltune.report import (
    collect,
    paired_comparisons,
    regenerate,
    render_console,
    results_table,
    write_results,
)
from celltune.rundir import RunDir

N_IMAGES = 8
PAPER = {
    "unet": {"threshold": 0.2, "dice": 0.77, "iou": 0.64},
    "plain": {"threshold": "two classes"},
}
SIZE = 32
# row -> (model, head, errors added per image index, params in done.json or None = count it)
ROWS = {
    "unet": ("unet", "binary", lambda i: i, 24_436_369),  # encoder set below
    "pspnet": ("pspnet", "binary", lambda i: 12 + 3 * i, 2_000_000),
    "plain": ("unet_plain", "two_class", lambda i: 6 + (5 * i) % 17, None),
}


def _truth(i: int) -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    labels[4:14, 4:14] = 1
    labels[18 : 24 + i, 16:28] = 2  # image i has a larger second cell, so Dice varies
    return labels


def _prediction(truth: np.ndarray, errors: int) -> np.ndarray:
    """Truth with ``errors`` missed pixels (first cell) and ``errors`` false pixels (top row)."""
    pred = truth > 0
    missed = np.argwhere(pred)[:errors]
    pred[missed[:, 0], missed[:, 1]] = False
    pred[0, :errors] = True
    return pred


def _hand_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    t = truth > 0
    tp, fp, fn = int((pred & t).sum()), int((pred & ~t).sum()), int((~pred & t).sum())
    tn = pred.size - tp - fp - fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
    }


def _write_row(study: Path, row: str, data: Path, splits: Splits) -> list[dict]:
    model, head, errors, params = ROWS[row]
    run = study / row
    options = {"tiny": True} if params is None else {}
    encoder = "resnet18" if model == "unet" else None
    cfg = RunConfig.model_validate(
        {
            "name": row,
            "model": {"name": model, "head": head, "encoder": encoder, "options": options},
        }
    )
    save_run_config(cfg, run / "config.yaml", {"version": "test"})
    splits.save(run / "splits.json")
    rows = []
    for i in range(N_IMAGES):
        truth = _truth(i)
        pred = _prediction(truth, errors(i))
        write_png(run / "eval/test/masks" / f"img_{i:02d}.png", pred.astype(np.uint8) * 255)
        rows.append(
            {
                "name": f"img_{i:02d}",
                **_hand_scores(pred, truth),
                "cells_true": 2,
                "cells_pred": 2,
                "f1_iou50": 1.0 - 0.05 * (errors(i) > 10),
                "f1_mean_50_90": 0.8,
            }
        )
    RunDir(run).write_per_image("test", rows, PER_IMAGE_COLUMNS)
    summary = summarize_rows(rows, n_boot=200, seed=0)
    summary.update(
        {
            "threshold": 0.5 if head == "two_class" else 0.35,
            "head": head,
            "model": model,
            "failures": [],
        }
    )
    write_text(run / "eval/test/summary.json", json.dumps(summary))
    metrics = "epoch,train_loss,val_loss,val_dice,lr,seconds\n0,0.9,0.8,0.5,0.001,2\n1,0.5,0.6,0.7,0.0005,3\n"
    write_text(run / "metrics.csv", metrics)
    ts = (0.25, 0.35, 0.5)
    ThresholdResult(ts, (0.6, 0.8, 0.7), 0.35, 0.8, N_IMAGES).save(run / "threshold.json")
    done = {"threshold": summary["threshold"], "train_seconds": 125.0}
    if params is not None:
        done["params"] = params
    write_text(run / "done.json", json.dumps(done))
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    samples = []
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        image = data / "images" / f"img_{i:02d}.tif"
        label = data / "labels" / f"img_{i:02d}_label.tiff"
        write_tiff(image, rng.integers(0, 4000, (SIZE, SIZE), dtype=np.uint16))
        write_tiff(label, _truth(i).astype(np.int16))
        samples.append(Sample(image, label))
    splits = Splits(test=samples)
    study_dir = root / "study"
    per_image = {row: _write_row(study_dir, row, data, splits) for row in ROWS}
    (study_dir / "unfinished").mkdir()  # a row still training: no done.json
    results = collect(study_dir, labels={"plain": "plain <U-Net> & BN"})
    paths = write_results(
        study_dir,
        results,
        title="Fake <study>",
        paper=PAPER,
        description="Synthetic <rows> & masks.",
    )
    return {"dir": study_dir, "per_image": per_image, "results": results, "paths": paths}


def test_every_output_file_is_written(study):
    d = study["dir"]
    for rel in (
        "results.md",
        "results.csv",
        "report.html",
        "plots/loss_curves.png",
        "plots/threshold_curves.png",
        "plots/masks.png",
    ):
        assert (d / rel).is_file() and (d / rel).stat().st_size > 0, rel
    for rel in ("plots/loss_curves.png", "plots/threshold_curves.png", "plots/masks.png"):
        assert (d / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(study["paths"]) == {"md", "csv", "html", "loss", "threshold", "masks"}


def test_collect_reads_finished_rows_only(study):
    results = study["results"]
    # Without a row list: every sub-folder with done.json, sorted; "unfinished" is left out.
    assert [r.name for r in results] == ["plain", "pspnet", "unet"]
    by_name = {r.name: r for r in results}
    assert by_name["plain"].label == "plain <U-Net> & BN"
    assert by_name["unet"].model == "unet (resnet18)"  # an explicit encoder is shown
    assert by_name["plain"].model == "unet_plain"
    assert by_name["unet"].train_seconds == 125.0


def test_params_come_from_done_json_or_are_counted(study):
    from celltune.models import count_params, create_model

    by_name = {r.name: r for r in study["results"]}
    assert by_name["unet"].params == 24_436_369
    expected = count_params(create_model("unet_plain", head="two_class", tiny=True))
    assert by_name["plain"].params == expected


def test_table_numbers_match_the_per_image_scores(study):
    table = {t["row"]: t for t in results_table(study["results"])}
    for row, rows in study["per_image"].items():
        assert table[row]["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
        assert table[row]["iou"] == pytest.approx(np.mean([r["iou"] for r in rows]))
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        assert table[row]["dice_pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert table[row]["dice_ci_low"] <= table[row]["dice"] <= table[row]["dice_ci_high"]
    assert table["plain"]["threshold"] == "argmax"
    assert table["unet"]["threshold"] == 0.35
    assert "paper_dice" not in table["unet"]


def test_results_md_lists_every_row_with_its_numbers(study):
    text = (study["dir"] / "results.md").read_text()
    lines = text.splitlines()
    for row, rows in study["per_image"].items():
        label = "plain <U-Net> & BN" if row == "plain" else row
        line = next(line for line in lines if line.startswith(f"| {label} |"))
        assert f"{np.mean([r['dice'] for r in rows]):.3f} [" in line
        assert f"{np.mean([r['iou'] for r in rows]):.3f} [" in line
    unet = next(line for line in lines if line.startswith("| unet |"))
    assert "| 0.35 |" in unet and "24.4M" in unet and "2.1 min" in unet
    assert unet.endswith("| 0.20 | 0.77 | 0.64 |")  # the paper's threshold, Dice, IoU
    plain = next(line for line in lines if line.startswith("| plain"))
    assert "| argmax |" in plain and plain.endswith("| two classes | – | – |")
    assert "Synthetic <rows> & masks." in text
    assert "both empty" in text  # the empty-mask rule is stated


def test_results_csv_has_raw_numbers(study):
    with (study["dir"] / "results.csv").open() as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(ROWS)
    dice = np.mean([r["dice"] for r in study["per_image"]["pspnet"]])
    assert float(rows["pspnet"]["dice"]) == pytest.approx(dice, abs=1e-5)
    assert rows["plain"]["threshold"] == "argmax"
    assert rows["unet"]["paper_dice"] == "0.77" and rows["pspnet"]["paper_dice"] == ""
    assert rows["plain"]["paper_threshold"] == "two classes"
    assert int(rows["pspnet"]["params"]) == 2_000_000


def test_html_is_self_contained_and_escaped(study):
    text = (study["dir"] / "report.html").read_text()
    assert text.count('<img src="data:image/png;base64,') == 3
    assert not re.search(r"https?://", text)
    assert "<link" not in text and "<script" not in text
    assert "Fake &lt;study&gt;" in text and "Fake <study>" not in text
    assert "plain &lt;U-Net&gt; &amp; BN" in text
    assert "<p>Synthetic &lt;rows&gt; &amp; masks.</p>" in text
    assert "both empty" in text and "probability &gt;= the threshold" in text
    assert "Paired comparison" in text and "Wilcoxon" in text


def test_paired_comparison_picks_the_better_row_with_scipys_p_value(study):
    comparisons = paired_comparisons(study["results"])
    assert {c["a"] for c in comparisons} == {"unet"}  # the best row against each other
    vs = next(c for c in comparisons if c["b"] == "pspnet")
    a = np.array([r["dice"] for r in study["per_image"]["unet"]])
    b = np.array([r["dice"] for r in study["per_image"]["pspnet"]])
    assert vs["higher"] == "unet" and vs["significant"]
    assert vs["n_common"] == N_IMAGES
    assert vs["mean_diff"] == pytest.approx((a - b).mean())
    assert vs["wilcoxon_p"] == pytest.approx(wilcoxon(a - b).pvalue)
    assert vs["wilcoxon_p"] == pytest.approx(2 / 2**N_IMAGES)  # every image favours unet
    html_text = (study["dir"] / "report.html").read_text()
    assert '<td class="num">0.008</td>' in html_text  # 2/256 shown to three decimals
    assert len(paired_comparisons(study["results"], against="all")) == 3


def test_paired_comparisons_are_holm_corrected_and_need_the_interval_to_agree(study):
    from celltune.evaluation.stats import holm

    comparisons = paired_comparisons(study["results"], against="all")
    raw = [c["wilcoxon_p"] for c in comparisons]
    assert [c["p_holm"] for c in comparisons] == pytest.approx(holm(raw))
    for c in comparisons:
        agree = c["ci_low"] > 0 or c["ci_high"] < 0
        assert c["significant"] == (c["p_holm"] < 0.05 and agree and c["rank_direction"] != 0)
    # 19 images favour A slightly, one favours B a lot: the ranks say A, the mean says B.
    results = collect(study["dir"], rows=["unet", "pspnet"])
    a = [0.80] * 19 + [0.30]
    b = [x - 0.015 for x in a[:19]] + [0.80]
    for row, values in zip(results, (a, b), strict=True):
        row.per_image = [{"name": f"im{i}", "dice": v} for i, v in enumerate(values)]
        row.summary = {**row.summary, "dice": float(np.mean(values))}
    (c,) = paired_comparisons(results)
    assert c["wilcoxon_p"] < 0.01 and c["ci_low"] < 0 < c["ci_high"]
    assert not c["significant"] and c["better"] == "neither"
    html_text = render_html_text(results)
    assert "Holm" in html_text


def render_html_text(results) -> str:
    from celltune.report.html import render_html

    return render_html(results, "t", {}, {}, None, "")


def test_paired_comparison_uses_only_images_in_common(study, tmp_path):
    results = collect(study["dir"], rows=["unet", "pspnet"])
    results[1].per_image = results[1].per_image[2:]  # pspnet lost two images
    (c,) = paired_comparisons(results)
    assert (c["n_common"], c["n_only_a"], c["n_only_b"]) == (N_IMAGES - 2, 2, 0)
    a = [r["dice"] for r in results[0].per_image[2:]]
    b = [r["dice"] for r in results[1].per_image]
    assert c["wilcoxon_p"] == pytest.approx(wilcoxon(np.subtract(a, b)).pvalue)


def test_collect_keeps_the_given_row_order(study):
    results = collect(study["dir"], rows=["unet", "unfinished", "plain"])
    assert [r.name for r in results] == ["unet", "plain"]


def test_collect_errors_name_the_folder(tmp_path):
    with pytest.raises(RunError, match="study folder not found"):
        collect(tmp_path / "missing")
    (tmp_path / "row").mkdir()
    with pytest.raises(RunError, match="no finished rows"):
        collect(tmp_path)
    write_text(tmp_path / "row" / "done.json", "{truncated")
    with pytest.raises(RunError, match=r"row/done\.json: unreadable"):
        collect(tmp_path)


def test_console_table_fits_the_terminal(study):
    from rich.console import Console

    paper = {"unet": {"dice": 0.77, "iou": 0.64}}
    wide = Console(record=True, width=250)
    render_console(study["results"], wide, paper=paper, title="T")
    text = wide.export_text()
    dice = np.mean([r["dice"] for r in study["per_image"]["unet"]])
    assert "Params" in text and "24.4M" in text and f"{dice:.3f}" in text and "argmax" in text
    assert "Paper" in text and "0.77" in text
    narrow = Console(record=True, width=64)
    render_console(study["results"], narrow, paper=paper)
    lines = narrow.export_text().splitlines()
    assert max(len(line) for line in lines) <= 64
    assert "Params" not in "\n".join(lines)  # optional columns dropped, labels kept
    assert any(line.lstrip().startswith("pspnet ") for line in lines)
    assert any(f"{dice:.3f}" in line and line.lstrip().startswith("unet ") for line in lines)


def test_regenerate_uses_study_yaml_and_survives_missing_images(study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    for name in ("results.md", "report.html", "plots/masks.png"):
        (copy / name).unlink()
    write_text(
        copy / "study.yaml",
        "name: Copied\ndescription: Copied <b>study</b>\nrows:\n  - name: unet\n"
        "    label: U-Net R34\n    paper: {dice: 0.77, iou: 0.64}\n  - name: plain\n",
    )
    # Point the test images at a folder that does not exist: the grid cannot be drawn.
    for run in ("unet", "plain"):
        s = json.loads((copy / run / "splits.json").read_text())
        s["test"] = [
            {"image": str(tmp_path / "gone" / Path(x["image"]).name), "label": x["label"]}
            for x in s["test"]
        ]
        write_text(copy / run / "splits.json", json.dumps(s))
    report = regenerate(copy)
    assert [r.label for r in report.results] == ["U-Net R34", "plain"]
    assert report.title == "Copied" and report.paper == {"unet": {"dice": 0.77, "iou": 0.64}}
    text = (copy / "report.html").read_text()
    assert "<h1>Copied</h1>" in text and "Paper Dice" in text
    assert "Copied &lt;b&gt;study&lt;/b&gt;" in text
    assert "Not drawn:" in text and "masks" not in report.paths
    assert text.count("data:image/png;base64,") == 2
    assert "| U-Net R34 |" in (copy / "results.md").read_text()


def test_write_results_applies_labels(study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    results = collect(copy, rows=["unet", "pspnet"])
    paths = write_results(copy, results, labels={"unet": "U-Net!"}, grid_images=1)
    text = paths["md"].read_text()
    assert "| U-Net! |" in text and "| pspnet |" in text and "Paper" not in text
    assert [r.label for r in results] == ["unet", "pspnet"]  # the inputs are not modified


def test_cli_report(study, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from celltune.cli import app

    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    (copy / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(copy), "--title", "Again", "--images", "2"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    assert "<h1>Again</h1>" in (copy / "report.html").read_text()
