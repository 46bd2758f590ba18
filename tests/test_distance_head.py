"""The instance-aware ``distance`` head: target, augmentation, loss, decoding, a tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from celltune.cli import app
from celltune.config import RunConfig, run_config_from_dict, run_config_with_overrides
from celltune.data.augment import Augmentation, build_augmentation
from celltune.data.dataset import CropDataset, ImageCache, WholeImageDataset
from celltune.data.samples import Sample
from celltune.data.synthetic import write_dataset
from celltune.data.targets import distance_map, make_target, num_classes, target_plane
from celltune.evaluation.evaluate import evaluate_run
from celltune.inference.batch import predict_files
from celltune.inference.export import export_model
from celltune.inference.instances import instances_from_distance, instances_from_distance_tiled
from celltune.inference.predict import Predictor
from celltune.io import read_label, write_tiff
from celltune.models import HEAD_TARGETS, HEADS, create_model, list_models
from celltune.models.build import class_probabilities, foreground_probability
from celltune.training.losses import bce_dice_loss, build_loss
from celltune.workflows.run import run_pipeline

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def discs(shape: tuple[int, int], circles: list[tuple[int, int, float]]) -> np.ndarray:
    """Instance map: disc ``i + 1`` for each ``(cy, cx, r)``; a pixel in two discs goes to the
    nearer centre, so touching discs meet on a straight line and each keeps its own centre."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    for i, (cy, cx, r) in enumerate(circles, start=1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        take = (d2 <= r * r) & (d2 < best)
        labels[take], best[take] = i, d2[take]
    return labels


CENTRES = [(32, 22), (32, 42)]


def touching_discs() -> np.ndarray:
    """Two discs of radius 12 whose centres are 20 px apart: a straight contact 13 px long."""
    return discs((64, 64), [(*c, 12) for c in CENTRES])


def contact_line(labels: np.ndarray) -> np.ndarray:
    """Cell pixels with a 4-neighbour of another cell (not background)."""
    p = np.pad(labels, 1)
    centre = p[1:-1, 1:-1]
    out = np.zeros(labels.shape, bool)
    for nb in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        out |= (nb != centre) & (nb > 0) & (centre > 0)
    return out


def perfect(labels: np.ndarray) -> np.ndarray:
    """The target used as a prediction: ``(2, H, W)`` foreground probability and distance."""
    return make_target(labels, "distance").numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the ids: a one-to-one map between the labels of ``a`` and ``b``."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def matches_each_cell(cells: np.ndarray, labels: np.ndarray, min_iou: float = 0.9) -> None:
    for true_id in range(1, int(labels.max()) + 1):
        overlaps = np.bincount(cells[labels == true_id], minlength=int(cells.max()) + 1)
        pred_id = int(np.argmax(overlaps[1:]) + 1)
        assert iou(cells == pred_id, labels == true_id) >= min_iou, true_id


# --- the head in the zoo and the config ---------------------------------------------------

def test_distance_head_has_two_channels_and_learns_the_distance_target():
    assert HEADS["distance"] == 2 and HEAD_TARGETS["distance"] == "distance"
    assert num_classes("distance") == 2
    assert target_plane("distance") is distance_map
    assert target_plane("three_class") is None
    assert run_config_from_dict({"model": {"head": "distance"}}).model.head == "distance"
    cfg = run_config_with_overrides(None, {"model.head": "distance"}, default_name="d")
    assert cfg.model.head == "distance"


def test_train_help_lists_the_distance_head():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "distance" in result.output and "boundary" in result.output


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_with_the_distance_head(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, head="distance", tiny=True).eval()
    assert model.head == "distance" and model.out_channels == 2
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_foreground_is_the_sigmoid_of_channel_zero():
    logits = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1)
    fg = foreground_probability(logits, head="distance")
    assert fg.item() == pytest.approx(torch.sigmoid(torch.tensor(1.5)).item())
    # Without the head, two channels are the two-class softmax: a different number.
    assert foreground_probability(logits).item() != pytest.approx(fg.item())
    assert torch.allclose(class_probabilities(logits, head="distance"), torch.sigmoid(logits))
    assert torch.allclose(class_probabilities(logits), torch.softmax(logits, dim=1))


# --- the target ---------------------------------------------------------------------------

def test_each_touching_disc_peaks_at_its_own_centre():
    labels = touching_discs()
    target = make_target(labels, "distance").numpy()
    assert target.shape == (2, 64, 64) and target.dtype == np.float32
    np.testing.assert_array_equal(target[0], (labels > 0).astype(np.float32))
    dist = target[1]
    assert (dist[labels == 0] == 0).all()
    for cell_id, (cy, cx) in enumerate(CENTRES, start=1):
        inside = np.where(labels == cell_id, dist, -1.0)
        assert dist[labels == cell_id].max() == pytest.approx(1.0)
        peak = np.unravel_index(np.argmax(inside), inside.shape)
        assert abs(peak[0] - cy) <= 1.5 and abs(peak[1] - cx) <= 1.5, peak
        assert dist[cy, cx] >= 0.9
    contact = contact_line(labels)
    assert contact.sum() >= 20  # both sides of a 13 px contact
    assert dist[contact].max() < 0.35
    # Both discs as one cell (the mask's own distance transform): no dip at the contact.
    merged = distance_map((labels > 0).astype(np.int32))
    assert merged[contact].max() > 0.55 and merged[contact].mean() > 2 * dist[contact].mean()


def test_the_image_edge_is_not_a_border():
    labels = np.zeros((32, 32), np.int32)
    labels[:, :10] = 1  # a band along the left edge, cut by the top and bottom edges too
    dist = distance_map(labels)
    # Distance grows from column 9 (its only real border) towards the image edge.
    assert dist[16, 0] == pytest.approx(1.0) and dist[16, 9] == pytest.approx(0.1)
    np.testing.assert_allclose(dist[0], dist[16])
    whole = np.ones((8, 8), np.int32)  # a cell filling the image has no border at all
    np.testing.assert_array_equal(distance_map(whole), np.ones((8, 8), np.float32))


def test_a_plane_is_used_as_given_but_kept_off_the_background():
    labels = touching_discs()
    plane = np.full(labels.shape, 0.7, np.float32)
    target = make_target(labels, "distance", plane).numpy()
    assert (target[1][labels > 0] == np.float32(0.7)).all() and (target[1][labels == 0] == 0).all()
    with pytest.raises(ValueError, match="does not match"):
        make_target(labels, "distance", plane[:10])


# --- augmentation and crops keep the distance aligned with the mask -----------------------

def _pair(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    circles = [(*rng.integers(8, size - 8, 2), float(rng.uniform(5, 10))) for _ in range(5)]
    labels = discs((size, size), circles)
    image = (0.1 + 0.5 * (labels > 0) + 0.1 * (labels % 3)).astype(np.float32)[..., None]
    return image, labels, distance_map(labels)


def test_a_flip_moves_image_mask_and_distance_together():
    image, labels, plane = _pair()
    flip = Augmentation("flip", [A.HorizontalFlip(p=1.0)])
    out_image, out_labels, out_plane = flip.with_plane(image, labels, plane, seed=0)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_labels, labels[:, ::-1])
    np.testing.assert_array_equal(out_plane, plane[:, ::-1])


def test_aug1_moves_the_distance_exactly_like_the_mask():
    image, labels, plane = _pair(1)
    augment = build_augmentation("aug1")
    for seed in range(8):
        out_image, out_labels, out_plane = augment.with_plane(image, labels, plane, seed)
        # The distance map of the moved labels is the moved distance map.
        np.testing.assert_allclose(out_plane, distance_map(out_labels), atol=1e-6)
        np.testing.assert_allclose(out_image[..., 0], 0.1 + 0.5 * (out_labels > 0)
                                   + 0.1 * (out_labels % 3), atol=1e-6)


def test_intensity_augmentation_never_touches_the_distance():
    image, labels, plane = _pair(2)
    intensity = Augmentation("intensity", [
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0),
        A.GaussNoise(std_range=(0.05, 0.1), p=1.0),
    ])
    out_image, out_labels, out_plane = intensity.with_plane(image, labels, plane, seed=3)
    assert not np.array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_array_equal(out_plane, plane)


def test_warps_interpolate_the_distance_bilinearly_and_keep_it_aligned():
    image, labels, plane = _pair(3)
    affine = Augmentation("affine", [A.Affine(scale=(1.2, 1.2), rotate=(17, 17), p=1.0)])
    out_image, out_labels, out_plane = affine.with_plane(image, labels, plane, seed=0)
    assert set(np.unique(out_labels)) <= set(np.unique(labels))  # ids stay ids (nearest)
    # Bilinear: values between the original ones appear; nearest would only copy them.
    assert len(set(np.unique(out_plane)) - set(np.unique(plane))) > 50
    fg = out_labels > 0
    assert np.corrcoef(out_image[..., 0].ravel(), fg.ravel())[0, 1] > 0.8
    assert out_plane[fg].mean() > 0.3 and np.abs(out_plane[~fg]).mean() < 0.02
    assert np.corrcoef(out_plane.ravel(), distance_map(out_labels).ravel())[0, 1] > 0.95
    # aug2 moves them together too (seeded, reproducible).
    augment = build_augmentation("aug2")
    for seed in range(6):
        a = augment.with_plane(image, labels, plane, seed)
        b = augment.with_plane(image, labels, plane, seed)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert np.corrcoef(a[2].ravel(), distance_map(a[1]).ravel())[0, 1] > 0.9, seed


@pytest.fixture
def disc_sample(tmp_path) -> Sample:
    labels = discs((96, 96), [(30, 30, 14), (30, 56, 14), (70, 60, 12), (75, 20, 9)])
    image = (40 + 150 * (labels > 0)).astype(np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_tiff(tmp_path / "images" / "a.tif", image)
    write_tiff(tmp_path / "labels" / "a.tif", labels.astype(np.uint16))
    return Sample(tmp_path / "images" / "a.tif", tmp_path / "labels" / "a.tif")


def test_crops_cut_the_whole_image_distance_map(disc_sample, monkeypatch):
    labels = read_label(disc_sample.label)
    whole = distance_map(labels)
    ds = CropDataset([disc_sample], crop=32, augment="none", target="distance")
    monkeypatch.setattr(ds, "_corner", lambda *_: (20, 20))  # cuts discs 1 and 2
    item = ds[0]
    assert item["mask"].shape == (2, 32, 32) and item["mask"].dtype == torch.float32
    crop_labels = labels[20:52, 20:52]
    np.testing.assert_array_equal(item["mask"][0].numpy(), (crop_labels > 0).astype(np.float32))
    np.testing.assert_allclose(item["mask"][1].numpy(), whole[20:52, 20:52], atol=1e-7)
    # Computed on the crop instead, the cut cells would peak somewhere else.
    assert np.abs(distance_map(crop_labels) - whole[20:52, 20:52]).max() > 0.2


def test_the_distance_map_is_cached_with_the_image(disc_sample, monkeypatch):
    import celltune.data.dataset as dataset_module

    calls = []
    monkeypatch.setattr(dataset_module, "target_plane",
                        lambda kind: lambda lab: (calls.append(kind), distance_map(lab))[1])
    cache = ImageCache()
    ds = CropDataset([disc_sample], crop=32, augment="aug2", target="distance",
                     samples_per_epoch=4, cache=cache)
    ds.preload()
    items = [ds[i] for i in range(4)]
    assert calls == ["distance"] and len(cache) == 2  # the pair and its plane
    for item in items:
        mask, dist = item["mask"][0], item["mask"][1]
        assert (dist[mask == 0] == 0).all() and dist.min() >= 0 and dist.max() <= 1
    whole = WholeImageDataset([disc_sample], target="distance", cache=cache)[0]
    assert whole["mask"].shape == (2, 96, 96) and calls == ["distance"]
    np.testing.assert_allclose(whole["mask"][1].numpy(),
                               distance_map(read_label(disc_sample.label)), atol=1e-7)


# --- loss ---------------------------------------------------------------------------------

def _logits(target: torch.Tensor, s: float) -> torch.Tensor:
    """Logits whose sigmoids move from 0.5 (s = 0) towards the target (s -> 1)."""
    prob = (0.5 + s * (target - 0.5)).clamp(1e-4, 1 - 1e-4)
    return torch.log(prob / (1 - prob))


def test_the_loss_is_bce_dice_on_the_foreground_plus_the_distance_mse():
    target = torch.from_numpy(perfect(touching_discs()))[None]
    logits = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    loss = build_loss("bce_dice", head="distance")(logits, target)
    mse = ((torch.sigmoid(logits[:, 1]) - target[:, 1]) ** 2).mean()  # over all pixels
    expected = bce_dice_loss(logits[:, :1], target[:, :1]) + mse
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Other heads keep the bare loss.
    assert build_loss("bce_dice") is bce_dice_loss


@pytest.mark.parametrize("name", ["bce_dice", "dice", "focal"])
def test_the_loss_falls_towards_the_target_with_the_right_gradient(name):
    target = torch.from_numpy(perfect(touching_discs()))[None]
    loss = build_loss(name, head="distance")
    values = [loss(_logits(target, s), target).item() for s in (0.0, 0.5, 0.9)]
    assert values[0] > values[1] > values[2], values
    # The distance term alone falls too (foreground fixed at its target).
    fixed = _logits(target, 0.9)
    moving = [torch.cat([fixed[:, :1], _logits(target, s)[:, 1:]], 1) for s in (0.0, 0.5, 0.9)]
    values = [loss(m, target).item() for m in moving]
    assert values[0] > values[1] > values[2], values
    logits = torch.zeros(1, 2, 64, 64, requires_grad=True)
    loss(logits, target).backward()
    grad, t = logits.grad[0], target[0]
    assert (grad[0][t[0] == 1] < 0).all() and (grad[0][t[0] == 0] > 0).all()
    assert (grad[1][t[1] > 0.5] < 0).all() and (grad[1][t[1] < 0.5] > 0).all()


# --- decoding -----------------------------------------------------------------------------

def test_perfect_prediction_separates_the_touching_discs_again():
    labels = touching_discs()
    cells = instances_from_distance(perfect(labels))
    assert cells.dtype == np.int32 and cells.max() == 2
    matches_each_cell(cells, labels)


def test_a_foreground_without_a_seed_stays_one_cell():
    labels = touching_discs()
    prob2 = perfect(labels)
    low = prob2.copy()
    low[1] *= 0.4  # every distance below the seed threshold
    cells = instances_from_distance(low)
    assert cells.max() == 1
    assert np.array_equal(cells > 0, labels > 0)
    # A seed threshold under the contact's values merges the discs through it too.
    assert instances_from_distance(prob2, seed_threshold=0.05).max() == 1
    # Foreground threshold and min_size.
    assert instances_from_distance(prob2 * [[[0.6]], [[1.0]]], fg_threshold=0.7).max() == 0
    tiny = prob2.copy()
    tiny[:, 60:62, 60:62] = 1.0  # a 4-pixel cell
    assert instances_from_distance(tiny, min_size=16).max() == 2
    assert instances_from_distance(tiny, min_size=1).max() == 3


def test_decoding_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        instances_from_distance(np.zeros((3, 8, 8), np.float32))


def random_discs(size: int = 180, seed: int = 0) -> np.ndarray:
    """Separate discs and touching pairs (radius 5-10) scattered over a square image."""
    rng = np.random.default_rng(seed)
    circles: list[tuple[int, int, float]] = []
    for _ in range(400):
        if len(circles) >= 40:
            break
        cy, cx = rng.integers(12, size - 12, 2)
        r = float(rng.uniform(5, 10))
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 3) ** 2 for y, x, q in circles):
            circles.append((int(cy), int(cx), r))
            angle, r2 = rng.uniform(0, 2 * np.pi), float(rng.uniform(5, 10))
            dy, dx = (r + r2 - 4) * np.sin(angle), (r + r2 - 4) * np.cos(angle)
            y2, x2 = round(float(cy + dy)), round(float(cx + dx))
            fits = 12 <= y2 < size - 12 and 12 <= x2 < size - 12
            if fits and all((y2 - y) ** 2 + (x2 - x) ** 2 > (r2 + q + 3) ** 2
                            for y, x, q in circles[:-1]):
                circles.append((y2, x2, r2))
    return discs((size, size), circles)


def test_tiled_decoding_equals_whole_image_decoding():
    labels = random_discs()
    assert labels.max() >= 25 and contact_line(labels).sum() > 50  # touching pairs exist
    prob2 = perfect(labels)
    whole = instances_from_distance(prob2)
    tiled = instances_from_distance_tiled(prob2, tile=64, margin=32)
    assert whole.max() == labels.max()
    assert tiled.max() == whole.max()
    assert same_partition(whole, tiled)
    matches_each_cell(whole, labels, 0.8)
    # Images up to one window take the untiled path.
    assert np.array_equal(instances_from_distance_tiled(prob2, tile=512), whole)


# --- prediction ---------------------------------------------------------------------------

class _Perfect(torch.nn.Module):
    """A "model" returning fixed distance-head logits, for exact Predictor tests."""

    head, out_channels, size_divisor = "distance", 2, 32

    def __init__(self, labels: np.ndarray) -> None:
        super().__init__()
        prob = torch.from_numpy(perfect(labels)).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("logits", torch.log(prob / (1 - prob))[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)[..., : x.shape[2], : x.shape[3]]


class _TileMean(torch.nn.Module):
    """Two identical channels that depend on the whole tile (its mean): tiling matters."""

    head, out_channels, size_divisor = "distance", 2, 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = 6.0 * (x[:, :1] - x.mean(dim=(1, 2, 3), keepdim=True))
        return torch.cat([one, one], dim=1)


def test_predictor_decodes_instances_for_the_distance_head():
    labels = touching_discs()
    predictor = Predictor(_Perfect(labels), head="distance", tile=64, overlap=0.0, device="cpu")
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    prediction = predictor.predict(image)
    assert prediction.classes.shape == (2, 64, 64)
    assert np.array_equal(prediction.mask, labels > 0)
    np.testing.assert_allclose(prediction.probability, predictor.predict_proba(image), atol=1e-6)
    cells = predictor.predict_instances(image)
    assert cells.max() == 2
    matches_each_cell(cells, labels)
    assert predictor.predict_instances(image, method="components").max() == 1
    assert predictor.describe()["instances"]["seed_threshold"] == 0.5
    # The predictor's seed threshold reaches the decoding: low enough, the discs merge.
    merged = Predictor(_Perfect(labels), head="distance", tile=64, overlap=0.0, device="cpu",
                       instances={"seed_threshold": 0.05})
    assert merged.predict_instances(image).max() == 1


def test_tiles_blend_both_channels_with_the_same_weights_and_rescale_them():
    image = np.random.default_rng(1).random((150, 170)).astype(np.float32)
    tiled = Predictor(_TileMean(), head="distance", tile=64, overlap=0.5, device="cpu")
    probs = tiled.predict_classes(image)
    assert probs.shape == (2, 150, 170)
    np.testing.assert_array_equal(probs[0], probs[1])
    np.testing.assert_allclose(probs[0], tiled.predict_proba(image), atol=1e-6)
    single = Predictor(_TileMean(), head="distance", tile=256, overlap=0.0, device="cpu")
    assert np.abs(single.predict_classes(image) - probs).max() > 1e-3  # tiling did matter
    resized = Predictor(_TileMean(), head="distance", tile=64, resize=0.5, device="cpu")
    small = resized.predict_classes(image)
    assert small.shape == (2, 150, 170)
    np.testing.assert_array_equal(small[0], small[1])


def test_batch_prediction_writes_the_distance_heads_instances(tmp_path):
    labels = touching_discs()
    predictor = Predictor(_Perfect(labels), head="distance", tile=64, overlap=0.0, device="cpu")
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    write_tiff(tmp_path / "cells.tif", image)
    result = predict_files(predictor, [tmp_path / "cells.tif"], tmp_path / "out",
                           progress=False, overlay=False)
    assert result.ok and result.images[0].cells == 2
    written = read_label(tmp_path / "out" / "cells_labels.tif")
    assert np.array_equal(written, predictor.predict_instances(image))


def test_export_keeps_both_channels_and_records_the_head(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet_plain", in_channels=1, head="distance", tiny=True).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
    result = export_model(model, tmp_path / "d.pt", format="torchscript", logits=True)
    meta = json.loads(result.metadata_path.read_text())
    assert meta["head"] == "distance" and meta["output"]["channels"] == 2
    assert "distance" in meta["output"]["meaning"]
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(result.path))(x), logits, atol=1e-4)
        prob = export_model(model, tmp_path / "p.pt", format="torchscript")
        out = torch.jit.load(str(prob.path))(x)
    assert out.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(out[:, 0], torch.sigmoid(logits[:, 0]), atol=1e-4)


# --- the recipe trial and a tiny run ------------------------------------------------------

def test_recipe_trials_offer_the_distance_variant():
    path = BENCHMARKS / "recipe_trials.py"
    spec = importlib.util.spec_from_file_location("recipe_trials_distance", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    overrides = module.VARIANTS["distance"]["overrides"]
    assert RunConfig.model_validate(overrides).model.head == "distance"


def test_the_bench_scores_a_distance_run_with_its_own_decoding(tmp_path, monkeypatch):
    import celltune.inference.predict as predict
    from celltune.evaluation.postprocess import SEED_GRID
    from celltune.workflows.bench import BenchSettings, run_benchmark

    decoded = []
    original = predict.instances_from_distance_tiled

    def spy(*args, **kwargs):
        decoded.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "instances_from_distance_tiled", spy)
    root = tmp_path / "syn"
    write_dataset(root, n=10, size=64, seed=0)
    settings = BenchSettings(tiny=True, crop=64, batch_size=4, celltune={
        "data": {"crop": 64}, "train": {"batch_size": 4}, "model": {"head": "distance"}})
    result = run_benchmark(root, tmp_path / "out", recipes=["celltune"], seeds=[0],
                           minutes=0.02, settings=settings)
    # Each validation image once per seed threshold of the instance sweep, then each test image.
    n_test, n_val = result.split["counts"]["test"], result.split["counts"]["val"]
    assert len(decoded) == n_val * len(SEED_GRID) + n_test
    assert all(shape[0] == 2 for shape in decoded)
    assert 0.0 <= result.summary["celltune"]["f1"]["mean"] <= 1.0


def test_tiny_distance_run_trains_evaluates_and_predicts(tmp_path):
    root = tmp_path / "synth"
    write_dataset(root, n=10, size=64, seed=5)
    cfg = RunConfig.model_validate({
        "name": "tiny-distance",
        "data": {"root": str(root), "filter": "all", "val": 2, "test_fraction": 0.2,
                 "crop": 64, "samples_per_epoch": 8},
        "model": {"name": "unet_plain", "head": "distance", "options": {"tiny": True}},
        "train": {"epochs": 2, "batch_size": 4, "aug": "aug2"},
        "eval": {"bootstrap": 20},
    })
    result = run_pipeline(cfg, tmp_path / "run", progress=False)
    run = result.run_dir
    summary = json.loads((run / "eval/test/summary.json").read_text())
    assert summary["head"] == "distance" and summary["n_images"] >= 1
    assert 0.0 <= summary["dice"] <= 1.0 and 0.0 <= summary["f1_iou50"] <= 1.0
    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.head == "distance" and predictor.model.out_channels == 2
    again = evaluate_run(run, split="test", progress=False, save_masks=False)
    assert again["dice"] == pytest.approx(summary["dice"])
    images = sorted((root / "images").glob("*"))[:2]
    out = predict_files(predictor, images, tmp_path / "pred", progress=False, overlay=False)
    assert out.ok and len(out.images) == 2
    for image, record in zip(images, out.images, strict=True):
        labels = read_label(tmp_path / "pred" / f"{image.stem}_labels.tif")
        assert labels.dtype == np.int32 and labels.max() == record.cells
