"""Smoke tests for benchmarks/throughput.py: its pieces, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return _load("throughput")


@pytest.fixture(scope="module")
def common():
    return _load("_common")


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_steady_rate_skips_warmup_steps(common):
    # Steps end at t = 1, 3, 4, 6; after one warm-up step, 3 steps of 2 items take 6 - 1 s.
    assert common.steady_rate([1.0, 3.0, 4.0, 6.0], warmup=1, items=2) == pytest.approx(1.2)
    with pytest.raises(ValueError):
        common.steady_rate([1.0, 2.0], warmup=2, items=2)


def test_interleaved_medians_alternates_and_warms_up(common):
    calls = []
    medians = common.interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2
    )
    assert calls == ["a", "b"] * 3  # one warm-up round, then two timed rounds, alternating
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_image_to_tiles_is_row_major(throughput):
    image = np.zeros((64, 96), np.uint16)
    image[:32, 32:64] = 1000  # tile (row 0, col 1)
    image[32:, :32] = 2000  # tile (row 1, col 0), the brightest
    tiles = throughput.image_to_tiles(image, 32)
    assert tiles.shape == (6, 1, 32, 32)
    means = tiles.mean(dim=(1, 2, 3))
    assert int(means.argmax()) == 3
    assert means[1] > means[0] == means[2] == means[4] == means[5]


def test_quick_settings_and_validation(throughput):
    s = throughput.settings_from_args(throughput.parse_args(["--quick", "--device", "cpu"]))
    assert (s.size, s.tiny, s.device.type) == (64, True, "cpu")
    assert (s.batch_size, s.steps, s.warmup, s.image_size) == (4, 3, 1, 128)
    with pytest.raises(SystemExit):
        throughput.settings_from_args(throughput.parse_args(["--size", "48"]))


def test_replace_section_keeps_other_sections(common):
    text = "# Benchmarks\n\n<!-- memory:start -->\nmem\n<!-- memory:end -->\n"
    added = common.replace_section(text, "throughput", "first")
    assert "mem" in added and "<!-- throughput:start -->\nfirst\n<!-- throughput:end -->" in added
    replaced = common.replace_section(added, "throughput", "second")
    assert "first" not in replaced and "second" in replaced and "mem" in replaced
    assert replaced.count("<!-- throughput:start -->") == 1
    assert common.replace_section("", "x", "body").startswith("# Benchmarks\n")


def test_matmul_peak_is_positive(common):
    assert common.matmul_peak(torch.device("cpu"), n=64, repeats=2) > 0


def test_tiny_end_to_end_run_writes_table(throughput, tmp_path, restore_threads):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nother results\n", encoding="utf-8")
    rows = throughput.main(
        [
            "--quick",
            "--models",
            "unet",
            "--batch-size",
            "2",
            "--size",
            "32",
            "--steps",
            "2",
            "--image-size",
            "64",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    keys = [key for key, _, _ in throughput.COLUMNS]
    assert len(rows) == 1 and list(rows[0]) == keys and rows[0]["model"] == "unet"
    assert all(rows[0][k] > 0 for k in keys if k != "model")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nother results\n")
    section = text.split("<!-- throughput:start -->")[1].split("<!-- throughput:end -->")[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) == 3  # header, rule, one model
    assert all(line.count("|") == len(keys) + 1 for line in table)
    assert table[2].startswith("| unet |")
    assert "--models unet" in section and "torch" in section


def test_checks_separate_failures_from_ties(throughput):
    fast = {"model": "a", "train_x": 1.2, "infer_x": 0.99, "loader_x": 5.0}
    slow = {"model": "b", "train_x": 0.9, "infer_x": 1.0, "loader_x": 2.0}
    assert throughput.checks([fast]) == ([], ["a inference 0.99×"])
    failed, ties = throughput.checks([fast, slow])
    assert ties == ["a inference 0.99×"]
    assert failed == [
        "b training 0.90×: celltune slower than naive",
        "b: loader only 2.0× the training rate",
    ]
    assert "FAILED" in throughput.verdict([slow]) and "all checks pass" in throughput.verdict(
        [fast]
    )


def test_precision_key_matches_the_peak_each_path_runs_at(common):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert common.precision_key("32-true", cpu) == "fp32"
    assert common.precision_key("bf16-mixed", cuda) == "bf16"
    assert common.precision_key("16-mixed", cuda) == "fp16"
    # cuDNN runs fp32 convolutions in TF32 unless told otherwise.
    expected = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    assert common.precision_key("32-true", cuda) == expected


def _scores(folder: Path, recipe: str, seed: int, variants: dict[str, list[float]]) -> None:
    import json

    path = folder / "runs" / recipe / f"seed{seed}" / "scores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = {v: [{"name": f"img{i}", "dice": d, "iou": d, "f1": d} for i, d in enumerate(ds)]
              for v, ds in variants.items()}
    path.write_text(json.dumps({"recipe": recipe, "seed": seed, "variants": list(variants),
                                "train_seconds": 180.0, "scores": scores}))


def test_recipe_trials_compare_pairs_a_variant_with_the_baseline(tmp_path, capsys):
    import argparse

    trials = _load("recipe_trials")
    base, out = tmp_path / "bench", tmp_path / "trials"
    for seed in range(3):
        _scores(base, "celltune", seed, {"celltune": [0.5 + 0.01 * i for i in range(8)]})
        _scores(base, "plain_smp", seed, {"plain_smp@0.5": [0.2] * 8, "plain_smp@val": [0.3] * 8})
        _scores(out / "rescale", "celltune", seed, {"celltune": [0.8 + 0.01 * i for i in range(8)]})
    trials.compare_variants(argparse.Namespace(out=str(out), baseline=str(base)))
    printed = capsys.readouterr().out
    assert "| rescale | 0.835 (0.835-0.835) |" in printed
    assert "plain_smp@0.5" not in printed  # the loop is compared at its validation threshold
    row = next(ln for ln in printed.splitlines() if ln.startswith("| before - rescale | dice"))
    assert "-0.300" in row and row.rstrip(" |").endswith("rescale")


def test_step_cost_times_each_network_against_the_first(capsys, monkeypatch, restore_threads):
    step_cost = _load("step_cost")
    monkeypatch.setattr(sys, "argv", [
        "step_cost.py", "--network", "resnet18:128,64,32,16,8", "--network",
        "resnet18:64,32,16,16,8", "--crop", "64", "--batch-size", "2", "--steps", "1"])
    step_cost.main()
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| resnet18")]
    assert len(rows) == 2
    first, second = (ln.strip("| ").split(" | ") for ln in rows)
    assert first[0] == "resnet18:128,64,32,16,8" and first[3] == "1.00x"
    assert float(first[1].rstrip("M")) > float(second[1].rstrip("M"))  # wider decoder
    assert float(second[2]) > 0
