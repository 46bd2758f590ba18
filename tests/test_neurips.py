"""Layout discovery, pairing, filters and splits of NeurIPS-style dataset folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from celltune.config import DataConfig
from celltune.data.neurips import apply_filter, discover, make_splits, pair_files
from celltune.data.samples import Splits
from celltune.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILENAMES = SHARED / "neurips_filenames.json"
JUNMA = SHARED / "neurips_junma"


def _encoded(ext: str) -> bytes:
    """A valid 8x8 image file of type ``ext`` as bytes."""
    arr = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).astype(np.uint8)
    buf = io.BytesIO()
    if ext in (".tif", ".tiff"):
        tifffile.imwrite(buf, arr.astype(np.uint16) * 100)
    else:
        fmt = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG"}[ext]
        Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


_CACHE: dict[str, bytes] = {}


def put(path: Path) -> Path:
    """Write a tiny valid image (or int16 label for *_label files) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext not in _CACHE:
        _CACHE[ext] = _encoded(ext)
    path.write_bytes(_CACHE[ext])
    return path


def pair(split_dir: Path, stem: str, ext: str = ".tif") -> None:
    put(split_dir / "images" / f"{stem}{ext}")
    put(split_dir / "labels" / f"{stem}_label.tiff")


def names(samples) -> list[str]:
    return [s.image.name for s in samples]


# --- layouts -----------------------------------------------------------------------------


def test_zenodo_layout(tmp_path: Path) -> None:
    for i, ext in enumerate([".bmp", ".tif", ".png"], start=1):
        pair(tmp_path / "Training-labeled", f"cell_{i:05d}", ext)
    pair(tmp_path / "Tuning", "cell_00001", ".tiff")
    pair(tmp_path / "Tuning", "cell_00002", ".png")
    pair(tmp_path / "Testing" / "Public", "cell_00001", ".tif")
    put(tmp_path / "Testing" / "Hidden" / "images" / "cell_00009.tif")  # unlabeled, ignored

    found = discover(tmp_path)

    assert found.layout == "splits"
    assert {k: len(v) for k, v in found.splits.items()} == {
        "training": 3,
        "tuning": 2,
        "testing": 1,
    }
    assert names(found.splits["training"]) == ["cell_00001.bmp", "cell_00002.tif", "cell_00003.png"]
    assert found.splits["training"][0].label == (
        tmp_path / "Training-labeled" / "labels" / "cell_00001_label.tiff"
    )
    assert found.folders["testing"] == tmp_path / "Testing"
    assert found.unpaired_images == [] and found.unpaired_labels == []


@pytest.mark.parametrize(
    "folder", ["Training", "TrainLabeled", "Train_Labeled", "train-labeled", "TRAINING"]
)
def test_older_training_names(tmp_path: Path, folder: str) -> None:
    pair(tmp_path / folder, "cell_00001")
    found = discover(tmp_path)
    assert list(found.splits) == ["training"]
    assert found.folders["training"] == tmp_path / folder


def test_case_insensitive_image_and_label_folders(tmp_path: Path) -> None:
    put(tmp_path / "Tuning" / "Images" / "a.tif")
    put(tmp_path / "Tuning" / "LABELS" / "a_label.tiff")
    assert names(discover(tmp_path).splits["tuning"]) == ["a.tif"]


def test_bare_folder(tmp_path: Path) -> None:
    pair(tmp_path, "x1")
    pair(tmp_path, "x2", ".png")
    found = discover(tmp_path)
    assert found.layout == "bare"
    assert names(found.splits["training"]) == ["x1.tif", "x2.png"]


@pytest.mark.parametrize(
    ("folder", "role"), [("Training-labeled", "training"), ("Tuning", "tuning")]
)
def test_root_pointing_at_a_split_folder(tmp_path: Path, folder: str, role: str) -> None:
    pair(tmp_path / folder, "cell_00001")
    found = discover(tmp_path / folder)
    assert found.layout == "bare"
    assert list(found.splits) == [role]


def test_pairing_variants_and_unpaired(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for stem in ["a", "b", "c", "d", "lonely"]:
        put(images / f"{stem}.tif")
    put(labels / "a_label.tiff")
    put(labels / "b_label.png")
    put(labels / "c.tif")
    put(labels / "d_label.tif")
    put(labels / "d.tif")  # a plain-stem label loses to the _label one
    put(labels / "orphan_label.tiff")
    put(images / "._a.tif")  # macOS resource fork: hidden, ignored
    (images / "notes.txt").write_text("not an image")

    found = discover(tmp_path)

    got = {s.image.name: s.label.name for s in found.splits["training"]}
    assert got == {
        "a.tif": "a_label.tiff",
        "b.tif": "b_label.png",
        "c.tif": "c.tif",
        "d.tif": "d_label.tif",
    }
    assert found.unpaired_images == [images / "lonely.tif"]
    assert found.unpaired_labels == [labels / "d.tif", labels / "orphan_label.tiff"]


def test_images_sharing_a_stem_pair_only_once(tmp_path: Path) -> None:
    a_png, a_tif = tmp_path / "a.png", tmp_path / "a.tif"
    label = tmp_path / "a_label.tiff"
    samples, lonely_images, lonely_labels = pair_files([a_tif, a_png], [label])
    assert [(s.image, s.label) for s in samples] == [(a_png, label)]
    assert lonely_images == [a_tif] and lonely_labels == []


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found.*Training-labeled/"):
        discover(tmp_path / "nope")


def test_unrecognised_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    put(tmp_path / "stuff" / "a.tif")
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    for expected in (
        "images/ and labels/",
        "Training-labeled/",
        "Tuning/",
        "Testing/Public/",
        "Train_Labeled/",
    ):
        assert expected in message


# --- filters -----------------------------------------------------------------------------


def test_study_filter_keeps_tif_and_tiff_only(tmp_path: Path) -> None:
    for stem, ext in [("a", ".tif"), ("b", ".TIFF"), ("c", ".png"), ("d", ".bmp"), ("e", ".jpg")]:
        put(tmp_path / "images" / f"{stem}{ext}")
        put(tmp_path / "labels" / f"{stem}_label.tiff")
    samples = discover(tmp_path).splits["training"]

    kept, dropped = apply_filter(samples, "study")
    assert names(kept) == ["a.tif", "b.TIFF"]
    assert {s.image.name: why for s, why in dropped} == {
        "c.png": ".png is not .tif/.tiff",
        "d.bmp": ".bmp is not .tif/.tiff",
        "e.jpg": ".jpg is not .tif/.tiff",
    }
    assert apply_filter(samples, "ALL") == (samples, [])


def test_unknown_filter_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid names are: all, study"):
        apply_filter([], "tiffs")


# --- the real data and its file names ----------------------------------------------------


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FILENAMES.is_file():
        pytest.skip(f"{FILENAMES} is absent (shared development data, not part of the project)")
    listing = json.loads(FILENAMES.read_text())
    root = tmp_path_factory.mktemp("neurips_standin")
    for folder in ("Training-labeled", "Tuning"):
        for name in listing[folder]:
            put(root / folder / "images" / name)
            put(root / folder / "labels" / f"{Path(name).stem}_label.tiff")
    return root


def test_standin_tree_gives_the_study_counts(standin_root: Path) -> None:
    found = discover(standin_root)
    assert len(found.splits["training"]) == 1000 and len(found.splits["tuning"]) == 101
    assert found.unpaired_images == [] and found.unpaired_labels == []
    assert len(apply_filter(found.splits["training"], "study")[0]) == 491
    assert len(apply_filter(found.splits["tuning"], "study")[0]) == 58


def test_standin_tree_splits_like_the_study(standin_root: Path) -> None:
    splits = make_splits(DataConfig(root=standin_root, filter="study", val=20), seed=0)
    assert splits.counts() == {"train": 471, "val": 20, "test": 58}
    assert all(s.image.parent.parent.name == "Tuning" for s in splits.test)


def test_junma_samples() -> None:
    if not JUNMA.is_dir():
        pytest.skip(f"{JUNMA} is absent (shared development data, not part of the project)")
    found = discover(JUNMA)
    assert names(found.splits["training"]) == ["cell_00225.png", "cell_00528.tif", "cell_00849.png"]
    assert names(apply_filter(found.splits["training"], "study")[0]) == ["cell_00528.tif"]


# --- splits ------------------------------------------------------------------------------


@pytest.fixture
def bare20(tmp_path: Path) -> Path:
    for i in range(20):
        pair(tmp_path, f"img_{i:02d}")
    pair(tmp_path, "rgb_00", ".png")  # dropped by the study filter
    return tmp_path


def _stems(samples) -> set[str]:
    return {s.name for s in samples}


def test_held_out_splits_follow_the_documented_recipe(bare20: Path) -> None:
    cfg = DataConfig(root=bare20, val=3, test_fraction=0.25)
    splits = make_splits(cfg, seed=7)

    # Sort by name, permute with default_rng(seed): test first, then validation from the rest.
    rng = np.random.default_rng(7)
    ordered = [f"img_{i:02d}" for i in range(20)]
    shuffled = [ordered[i] for i in rng.permutation(20)]
    test, rest = shuffled[:5], shuffled[5:]
    rest = sorted(rest)
    shuffled_rest = [rest[i] for i in rng.permutation(15)]
    assert [s.name for s in splits.test] == sorted(test)
    assert [s.name for s in splits.val] == sorted(shuffled_rest[:3])
    assert [s.name for s in splits.train] == sorted(shuffled_rest[3:])


def test_splits_deterministic_and_seed_dependent(bare20: Path) -> None:
    cfg = DataConfig(root=bare20, val=3, test_fraction=0.25)
    first, again, other = make_splits(cfg, 0), make_splits(cfg, 0), make_splits(cfg, 1)
    assert first == again
    assert first != other
    assert first.counts() == {"train": 12, "val": 3, "test": 5}
    parts = [_stems(first.train), _stems(first.val), _stems(first.test)]
    assert set.union(*parts) == {f"img_{i:02d}" for i in range(20)}
    assert sum(len(p) for p in parts) == 20


def test_val_fraction_and_filter_all(bare20: Path) -> None:
    # 21 images with filter all: test round(0.1*21)=2, val round(0.2*19)=4, train 15.
    splits = make_splits(DataConfig(root=bare20, filter="all", val=0.2, test_fraction=0.1), seed=3)
    assert splits.counts() == {"train": 15, "val": 4, "test": 2}


def test_test_split_is_the_filtered_tuning_folder(tmp_path: Path) -> None:
    for i in range(6):
        pair(tmp_path / "Training-labeled", f"cell_{i:05d}")
    pair(tmp_path / "Training-labeled", "cell_00099", ".bmp")
    for i, ext in enumerate([".tif", ".tiff", ".png"]):
        pair(tmp_path / "Tuning", f"cell_{i:05d}", ext)

    splits = make_splits(DataConfig(root=tmp_path, val=2), seed=0)

    assert names(splits.test) == ["cell_00000.tif", "cell_00001.tiff"]
    assert splits.counts() == {"train": 4, "val": 2, "test": 2}
    assert all("Training-labeled" in str(s.image) for s in splits.train + splits.val)


def test_test_split_from_a_list_file(tmp_path: Path) -> None:
    for i in range(8):
        pair(tmp_path / "Training-labeled", f"cell_{i:05d}")
    pair(tmp_path / "Tuning", "cell_00000")
    listing = tmp_path / "test.txt"
    listing.write_text(
        "# chosen by hand\nTuning/images/cell_00000.tif\n\ncell_00003.tif  # a training image\n"
        "Training-labeled/images/cell_00005\n"
    )

    splits = make_splits(DataConfig(root=tmp_path, val=2, test=str(listing)), seed=0)

    assert [str(s.image.relative_to(tmp_path)) for s in splits.test] == [
        "Tuning/images/cell_00000.tif",
        "Training-labeled/images/cell_00003.tif",
        "Training-labeled/images/cell_00005.tif",
    ]
    assert _stems(splits.train + splits.val) == {f"cell_{i:05d}" for i in (0, 1, 2, 4, 6, 7)}
    assert splits.counts() == {"train": 4, "val": 2, "test": 3}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [("cell_00042.tif", "matches no paired image"), ("cell_00000", "matches 2 images")],
)
def test_list_file_problems_name_the_line(tmp_path: Path, entry: str, problem: str) -> None:
    for i in range(3):
        pair(tmp_path / "Training-labeled", f"cell_{i:05d}")
    pair(tmp_path / "Tuning", "cell_00000")
    listing = tmp_path / "test.txt"
    listing.write_text(f"cell_00001.tif\n{entry}\n")
    with pytest.raises(DataError, match=f"line 2 .*{problem}"):
        make_splits(DataConfig(root=tmp_path, val=1, test=str(listing)), seed=0)


def test_missing_list_file(tmp_path: Path) -> None:
    pair(tmp_path, "a")
    with pytest.raises(DataError, match="test list file not found"):
        make_splits(DataConfig(root=tmp_path, val=1, test=str(tmp_path / "none.txt")), seed=0)


def test_empty_training_split_after_filter_names_root_and_filter(tmp_path: Path) -> None:
    pair(tmp_path, "a", ".png")
    pair(tmp_path, "b", ".bmp")
    with pytest.raises(DataError) as err:
        make_splits(DataConfig(root=tmp_path, val=1), seed=0)
    assert str(tmp_path) in str(err.value) and "'study'" in str(err.value)
    assert "training split is empty" in str(err.value)


def test_empty_tuning_split_after_filter(tmp_path: Path) -> None:
    for i in range(3):
        pair(tmp_path / "Training-labeled", f"t{i}")
    pair(tmp_path / "Tuning", "p", ".png")
    with pytest.raises(DataError, match="test split is empty with filter 'study'"):
        make_splits(DataConfig(root=tmp_path, val=1), seed=0)


def test_validation_larger_than_training_pool(tmp_path: Path) -> None:
    for i in range(3):
        pair(tmp_path / "Training-labeled", f"t{i}")
    pair(tmp_path / "Tuning", "v")
    with pytest.raises(DataError, match=r"--val 3 asks for 3 validation .* only 3 training images"):
        make_splits(DataConfig(root=tmp_path, val=3), seed=0)


def test_root_not_set() -> None:
    with pytest.raises(DataError, match=r"data\.root is not set"):
        make_splits(DataConfig(), seed=0)


def test_splits_save_load_round_trip(bare20: Path, tmp_path: Path) -> None:
    splits = make_splits(DataConfig(root=bare20, val=3), seed=5)
    path = splits.save(tmp_path / "run" / "splits.json")
    assert Splits.load(path) == splits
    assert json.loads(path.read_text())["test"][0]["label"].endswith("_label.tiff")


def test_split_folder_without_images_does_not_hide_another(tmp_path: Path) -> None:
    (tmp_path / "Training-labeled").mkdir()  # preferred name, but empty
    pair(tmp_path / "Training", "a")
    found = discover(tmp_path)
    assert found.folders["training"] == tmp_path / "Training"


# --- correlated images stay together ------------------------------------------------------


def test_frames_of_one_movie_are_never_split_between_train_val_and_test(tmp_path: Path) -> None:
    for movie, frames in (("a", 6), ("b", 6), ("c", 4), ("d", 4), ("e", 3)):
        for t in range(frames):
            pair(tmp_path, f"{movie}_t{t:03d}")
    for seed in range(5):
        splits = make_splits(DataConfig(root=tmp_path, val=4, test_fraction=0.2), seed=seed)
        movies = {k: {s.name.split("_")[0] for s in splits[k]} for k in ("train", "val", "test")}
        assert not movies["train"] & movies["val"] and not movies["train"] & movies["test"]
        assert not movies["val"] & movies["test"]
        assert 1 <= len(splits.val) <= 4 and splits.train


def test_with_two_movies_validation_is_a_block_of_the_last_frames(tmp_path: Path) -> None:
    for movie in ("m1", "m2"):
        for t in range(10):
            pair(tmp_path, f"{movie}_t{t:03d}")
    splits = make_splits(DataConfig(root=tmp_path, val=3, test_fraction=0.5), seed=0)
    # Test takes one whole movie; validation the last 3 frames of the other.
    assert len({s.name[:2] for s in splits.test}) == 1 and len(splits.test) == 10
    other = ({"m1", "m2"} - {splits.test[0].name[:2]}).pop()
    assert [s.name for s in splits.val] == [f"{other}_t{t:03d}" for t in (7, 8, 9)]
    assert [s.name for s in splits.train] == [f"{other}_t{t:03d}" for t in range(7)]
