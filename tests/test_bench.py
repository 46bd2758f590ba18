"""The quality benchmark on tiny synthetic data: split, isolation of the test images, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import celltune.io
from celltune.data.samples import Sample
from celltune.errors import ConfigError
from celltune.workflows import bench
from celltune.workflows.bench import BenchSettings, Trained, render_markdown, run_benchmark
from celltune.workflows.bench_split import group_of, make_split, prepare_split

TINY = BenchSettings(tiny=True, crop=64, batch_size=4, cellpose={"bsize": 64},
                     celltune={"data": {"crop": 64}, "train": {"batch_size": 4}})
MINUTES = 0.02


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from celltune.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("bench") / "syn"
    write_dataset(root, n=10, size=64, seed=0)
    return root


def _samples(names: list[str]) -> list[Sample]:
    return [Sample(Path(f"images/{n}.tif"), Path(f"labels/{n}_label.tiff")) for n in names]


def _names(samples: list[Sample]) -> list[str]:
    return [s.name for s in samples]


def test_groups_from_names():
    assert group_of("msc01_t005") == "msc01"
    assert group_of("tcga_TCGA-DB-5270-R01_3") == "TCGA-DB-5270"
    assert group_of("gbm40_07") == "gbm40_07"  # no rule: the image alone
    assert group_of("plate3_well7_f2", pattern=r"plate\d+_well\d+") == "plate3_well7"


def test_two_movies_split_by_movie_with_validation_from_the_training_movie():
    names = [f"msc01_t{i:03d}" for i in range(11)] + [f"msc02_t{i:03d}" for i in range(30)]
    splits, info = make_split(_samples(names))
    assert _names(splits.test) == names[:11]  # the whole first movie, nothing of the second
    assert all(n.startswith("msc02") for n in _names(splits.train) + _names(splits.val))
    # Validation is a block of consecutive frames at the end of the training movie.
    assert _names(splits.val) == names[-len(splits.val):] and len(splits.val) == 6
    assert "last 6 images" in info["rule"]
    assert make_split(_samples(names)) == (splits, info)  # deterministic


def test_slides_are_never_split_and_fractions_are_kept():
    names = [f"tcga_TCGA-AA-{c:04d}-R01_{k}" for c in range(5) for k in range(8)]
    names += [f"gbm40_{i:02d}" for i in range(40)]
    splits, _ = make_split(_samples(names))
    owner = {}
    for split in ("train", "val", "test"):
        for name in _names(splits[split]):
            assert owner.setdefault(group_of(name), split) == split
    assert abs(len(splits.test) - 20) <= 4 and abs(len(splits.val) - 12) <= 4
    assert sum(splits.counts().values()) == 80
    with pytest.raises(ConfigError, match="one group"):
        make_split(_samples([f"msc01_t{i:03d}" for i in range(9)]))


def test_user_split_file(data, tmp_path):
    files = sorted(p.name for p in (data / "images").iterdir())
    names = [Path(f).stem for f in files]
    spec = {"train": names[:6], "val": names[6:8], "test": files[8:]}  # stems or file names
    (tmp_path / "mine.json").write_text(json.dumps(spec))
    splits, _ = prepare_split(data, tmp_path / "out", split_file=tmp_path / "mine.json")
    assert _names(splits.test) == names[8:] and _names(splits.train) == names[:6]
    again, _ = prepare_split(data, tmp_path / "out")  # reused from out/split.json
    assert again == splits
    (tmp_path / "other.json").write_text(json.dumps({**spec, "val": names[5:8]}))
    with pytest.raises(ConfigError, match="different split"):
        prepare_split(data, tmp_path / "out", split_file=tmp_path / "other.json")
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "test": ["nope"]}))
    with pytest.raises(ConfigError, match="nope"):
        prepare_split(data, tmp_path / "out2", split_file=tmp_path / "bad.json")


def _fake_trainer(calls: list, offset: float):
    """A recipe that records what it was given and segments by a fixed intensity cut."""

    def train(job: bench.Job) -> Trained:
        calls.append((job.seed, _names(job.train), _names(job.val)))
        rng = np.random.default_rng(job.seed)

        def segment(image):
            gray = celltune.io.normalize(image.mean(axis=-1))
            mask = gray > 0.3 + offset + 0.02 * rng.random()
            return {f"fake{offset}": (mask, mask.astype(np.int32))}

        return Trained(segment, (f"fake{offset}",), train_seconds=0.0)

    return train


def test_split_is_saved_and_identical_across_recipes_and_seeds(data, tmp_path, monkeypatch):
    calls_a, calls_b = [], []
    monkeypatch.setitem(bench.TRAINERS, "fake_a", _fake_trainer(calls_a, 0.0))
    monkeypatch.setitem(bench.TRAINERS, "fake_b", _fake_trainer(calls_b, 0.2))
    out = tmp_path / "out"
    result = run_benchmark(data, out, recipes=["fake_a", "fake_b"], seeds=[0, 1, 2],
                           minutes=MINUTES)
    saved = json.loads((out / "split.json").read_text())
    expected = ([Path(s["image"]).stem for s in saved["train"]],
                [Path(s["image"]).stem for s in saved["val"]])
    assert [c[0] for c in calls_a] == [0, 1, 2] and len(calls_b) == 3
    assert all((c[1], c[2]) == expected for c in calls_a + calls_b)
    test = {Path(s["image"]).stem for s in saved["test"]}
    assert test and not test & (set(expected[0]) | set(expected[1]))
    assert result.summary["fake0.0"]["seeds"] == 3 and len(result.summary) == 2
    assert [(p["a"], p["b"], p["metric"]) for p in result.pairs] == [
        ("fake0.0", "fake0.2", "dice"), ("fake0.0", "fake0.2", "f1")]
    assert all(p["p_holm"] >= p["wilcoxon_p"] for p in result.pairs)
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1, 2]
    assert "| fake0.2 |" in (out / "results.md").read_text()
    # A second call reuses the split and every finished training.
    again = run_benchmark(data, out, recipes=["fake_a", "fake_b"], seeds=[0, 1, 2],
                          minutes=MINUTES)
    assert len(calls_a) == 3 and all(t["reused"] for t in again.trainings)
    assert json.loads((out / "split.json").read_text()) == saved
    assert again.summary == result.summary
    with pytest.raises(ConfigError, match="Unknown recipes"):
        run_benchmark(data, out, recipes=["fake_a", "nope"], seeds=[0])


def _record_reads(monkeypatch) -> tuple[list, dict]:
    """Every file celltune reads, tagged with whether the test scoring was running."""
    reads: list[tuple[str, bool]] = []
    phase = {"scoring": False}
    original_read, original_score = celltune.io.read_array, bench.score_test

    def read_array(path):
        reads.append((Path(path).resolve().name, phase["scoring"]))
        return original_read(path)

    def score_test(*args, **kwargs):
        phase["scoring"] = True
        try:
            return original_score(*args, **kwargs)
        finally:
            phase["scoring"] = False

    monkeypatch.setattr(celltune.io, "read_array", read_array)
    monkeypatch.setattr(bench, "score_test", score_test)
    return reads, phase


def _check_isolation(reads: list, out: Path, uses_val: bool = True) -> None:
    saved = json.loads((out / "split.json").read_text())
    files = {k: {Path(p).name for s in saved[k] for p in s.values()} for k in saved if k != "info"}
    selection = {name for name, scoring in reads if not scoring}
    scoring = {name for name, scoring in reads if scoring}
    assert not selection & files["test"], "a test image was read while training or choosing"
    if uses_val:
        assert files["val"] <= selection  # validation did feed the choices
    assert scoring == files["test"]  # and scoring read the test images only


def test_semantic_recipes_end_to_end_never_see_test_images(data, tmp_path, monkeypatch):
    reads, _ = _record_reads(monkeypatch)
    out = tmp_path / "out"
    lines: list[str] = []
    result = run_benchmark(data, out, recipes=["celltune", "plain_smp"], seeds=[0],
                           minutes=MINUTES, settings=TINY, progress=lines.append)
    _check_isolation(reads, out)
    assert list(result.summary) == ["celltune", "plain_smp@0.5", "plain_smp@val"]
    for entry in result.summary.values():
        assert all(0.0 <= entry[m]["mean"] <= 1.0 for m in ("dice", "iou", "f1"))
    plain = result.trainings[1]
    assert plain["info"]["steps"] >= 1 and 0 < plain["info"]["val_threshold"] < 1
    assert plain["train_seconds"] >= MINUTES * 60
    assert sum("training, budget" in line for line in lines) == 2
    assert not (out / "runs" / "celltune" / "seed0" / "checkpoints").exists()
    assert "| celltune - plain_smp@val | dice |" in render_markdown(result)


def test_an_instance_head_is_scored_with_its_own_decoding(data, tmp_path, monkeypatch):
    from dataclasses import replace

    import celltune.inference.predict as predict
    from celltune.evaluation.postprocess import SEED_GRID

    decoded = []
    original = predict.instances_from_classes_tiled

    def spy(*args, **kwargs):
        decoded.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "instances_from_classes_tiled", spy)
    boundary = replace(TINY, celltune={**TINY.celltune, "model": {"head": "boundary"}})
    result = run_benchmark(data, tmp_path / "out", recipes=["celltune"], seeds=[0],
                           minutes=MINUTES, settings=boundary)
    # Each validation image once per seed threshold of the instance sweep, then each test image.
    n_test, n_val = result.split["counts"]["test"], result.split["counts"]["val"]
    assert len(decoded) == n_val * len(SEED_GRID) + n_test
    assert all(shape[0] == 3 for shape in decoded)
    assert 0.0 <= result.summary["celltune"]["f1"]["mean"] <= 1.0


def test_flip_variant_scores_the_same_network_with_flips_and_its_own_threshold(
        data, tmp_path, monkeypatch):
    from dataclasses import replace

    import celltune.inference.predict as predict

    flips = []
    original = predict.flip_tta

    def spy(forward):
        flips.append(True)
        return original(forward)

    monkeypatch.setattr(predict, "flip_tta", spy)
    settings = replace(TINY, tta_variant=True)
    result = run_benchmark(data, tmp_path / "out", recipes=["celltune"], seeds=[0],
                           minutes=MINUTES, settings=settings)
    assert set(result.summary) >= {"celltune", "celltune@tta"}
    n_test, n_val = result.split["counts"]["test"], result.split["counts"]["val"]
    # Flipped forward passes: each validation image for the threshold, each test image once.
    assert len(flips) == n_val + n_test


def test_plan_epochs_fits_the_budget():
    from celltune.workflows.bench_cellpose import plan_epochs

    # 20 images in batches of 8: 3 batches per full epoch. 10 s set-up, 0.01 s a batch:
    # 0.95 * 1000 s / 0.01 s = 95000 batches, far more than 101 full epochs.
    assert plan_epochs(1010.0, 10.0, 0.01, 20, 8) == (95000 // 3, None)
    # 2 s a batch: 475 batches, 158 full epochs (more than 101).
    assert plan_epochs(1010.0, 10.0, 2.0, 20, 8) == (158, None)
    # 4 s a batch: 237 batches, fewer than 101 full epochs -> 2-batch epochs, 118 of them
    # (the schedule still decays at the end).
    assert plan_epochs(1010.0, 10.0, 4.0, 20, 8) == (118, 16)
    # 30 batches: one-batch epochs.
    assert plan_epochs(73.16, 10.0, 2.0, 20, 8) == (30, 8)
    assert plan_epochs(5.0, 10.0, 2.0, 20, 8) == (1, 8)  # nothing fits: one step's worth
    assert plan_epochs(1010.0, 10.0, 2.0, 20, 8, nimg_per_epoch=16) == (237, 16)


def test_cellpose_from_scratch_end_to_end(data, tmp_path, monkeypatch):
    from celltune.workflows import bench_cellpose

    if not bench_cellpose.available():
        pytest.skip("cellpose is not installed (optional extra: pip install -e '.[bench]')")
    import cellpose.models

    def no_fetch(*args, **kwargs):
        raise AssertionError("Cellpose looked for pretrained weights")

    monkeypatch.setattr(cellpose.models, "cache_model_path", no_fetch)
    reads, _ = _record_reads(monkeypatch)
    out = tmp_path / "out"
    result = run_benchmark(data, out, recipes=["cellpose"], seeds=[0], minutes=MINUTES,
                           settings=TINY)
    _check_isolation(reads, out, uses_val=False)  # its own recipe: last weights, no choices
    info = result.trainings[0]["info"]
    assert info["n_epochs"] >= 1 and info["calibration"]["batch"] > 0
    assert info["nimg_per_epoch"] == 8  # the tiny budget fits less than one batch per epoch
    assert 0.0 <= result.summary["cellpose"]["f1"]["mean"] <= 1.0
    assert not (out / "runs" / "cellpose" / "seed0" / "models").exists()


def test_bench_command_runs_the_library_and_reports(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from celltune.cli import app
    from celltune.data.synthetic import write_dataset

    def fake(job):
        def segment(image):
            mask = image.mean(axis=-1) > np.median(image)
            return {"fake": (mask, mask.astype(np.int32))}

        return Trained(segment, ("fake",), train_seconds=0.0)

    monkeypatch.setitem(bench.TRAINERS, "fake", fake)
    write_dataset(tmp_path / "data", n=8, size=64, seed=0)
    out = tmp_path / "out"
    args = ["bench", str(tmp_path / "data"), "--out", str(out), "--minutes", "0.01",
            "--seeds", "0,1", "--recipes", "fake"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[2/2] fake seed 1: trained" in result.output and "| fake |" in result.output
    assert (out / "split.json").is_file() and (out / "results.json").is_file()
    assert "--recipes fake" in (out / "results.md").read_text()
    bad = CliRunner().invoke(app, ["bench", str(tmp_path / "data"), "--out", str(out),
                                   "--recipes", "cellpos"])
    assert bad.exit_code != 0 and "cellpos" in str(bad.exception)
