"""The instance-aware ``boundary`` head: models, loss, decoding, tiled decoding, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from celltune.config import RunConfig, run_config_from_dict
from celltune.data.synthetic import generate_image, write_dataset
from celltune.data.targets import num_classes, three_class_target
from celltune.errors import ConfigError
from celltune.evaluation.evaluate import evaluate_run
from celltune.inference.batch import predict_files
from celltune.inference.instances import (
    instances_from_classes,
    instances_from_classes_tiled,
)
from celltune.inference.predict import Predictor
from celltune.io import read_image, read_label, write_tiff
from celltune.models import HEAD_TARGETS, HEADS, create_model, list_models
from celltune.models.build import class_probabilities, foreground_probability
from celltune.training.losses import build_loss, soft_dice_loss
from celltune.workflows.run import run_pipeline


def one_hot(target: np.ndarray) -> np.ndarray:
    """``(H, W)`` class indices -> ``(3, H, W)`` float32 "perfect probabilities"."""
    return np.eye(3, dtype=np.float32)[target].transpose(2, 0, 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the ids: a one-to-one map between the labels of ``a`` and ``b``."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def touching_discs() -> np.ndarray:
    """Two discs of radius 12 whose centres are 12 px apart: a wide, straight contact."""
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 32) ** 2 + (xx - 22) ** 2 <= 144] = 1
    labels[((yy - 32) ** 2 + (xx - 34) ** 2 <= 144) & (labels == 0)] = 2
    return labels


# --- the head in the zoo ------------------------------------------------------------------

def test_boundary_head_has_three_channels_and_learns_the_three_class_target():
    assert HEADS["boundary"] == 3
    assert HEAD_TARGETS["boundary"] == "three_class"
    for head, target in HEAD_TARGETS.items():
        assert num_classes(target) == HEADS[head], head


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_with_the_boundary_head(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, head="boundary", tiny=True).eval()
    assert model.head == "boundary" and model.out_channels == 3
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    assert torch.isfinite(logits).all()


def test_unknown_head_error_lists_boundary():
    with pytest.raises(ConfigError, match="boundary"):
        create_model("unet_plain", head="instances", tiny=True)
    with pytest.raises(ConfigError, match="boundary"):
        run_config_from_dict({"model": {"head": "instances"}})


def test_boundary_foreground_is_one_minus_background():
    logits = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    p = torch.softmax(logits, dim=1)
    assert foreground_probability(logits).item() == pytest.approx(1 - p[0, 0].item())
    assert torch.allclose(class_probabilities(logits), p)


# --- loss ---------------------------------------------------------------------------------

def test_boundary_dice_is_the_mean_of_interior_and_boundary():
    target = torch.from_numpy(three_class_target(touching_discs()))[None]
    perfect = torch.from_numpy(one_hot(target[0].numpy()))[None] * 40.0  # near one-hot
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    # Interior right, every boundary pixel called background: boundary Dice ~0, mean ~0.5.
    no_boundary = target.clone()
    no_boundary[no_boundary == 2] = 0
    logits = torch.from_numpy(one_hot(no_boundary[0].numpy()))[None] * 40.0
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("name", ["bce_dice", "dice", "ce", "focal"])
def test_losses_fall_as_boundary_predictions_improve(name):
    target = torch.from_numpy(three_class_target(touching_discs()))[None]
    right = torch.from_numpy(one_hot(target[0].numpy()))[None]
    loss = build_loss(name)
    values = [loss(right * scale, target).item() for scale in (0.0, 1.0, 4.0)]
    assert values[0] > values[1] > values[2], values


# --- decoding -----------------------------------------------------------------------------

def test_perfect_probabilities_give_back_two_touching_cells():
    labels = touching_discs()
    cells = instances_from_classes(one_hot(three_class_target(labels)))
    assert cells.dtype == np.int32 and cells.max() == 2
    for true_id in (1, 2):
        overlaps = np.bincount(cells[labels == true_id], minlength=3)
        pred_id = int(np.argmax(overlaps[1:]) + 1)
        assert iou(cells == pred_id, labels == true_id) > 0.9


def test_a_cell_predicted_as_all_boundary_is_kept_and_tiny_ones_dropped():
    labels = touching_discs()
    target = three_class_target(labels)
    target[4:8, 4:10] = 2  # a 24-pixel cell without interior
    target[60:62, 60:62] = 1  # 4 pixels: below min_size
    cells = instances_from_classes(one_hot(target), min_size=16)
    assert cells.max() == 3
    assert (cells[4:8, 4:10] > 0).all() and (cells[60:62, 60:62] == 0).all()


def test_thresholds_decide_seeds_and_foreground():
    labels = touching_discs()
    probs = one_hot(three_class_target(labels)) * 0.6 + 0.4 / 3  # P(interior) 0.733 inside
    assert instances_from_classes(probs, seed_threshold=0.7).max() == 2
    # No seed anywhere: the single foreground region becomes one cell.
    assert instances_from_classes(probs, seed_threshold=0.8).max() == 1
    assert instances_from_classes(probs, fg_threshold=0.9).max() == 0


def test_decoding_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        instances_from_classes(np.zeros((2, 8, 8), np.float32))


@pytest.mark.parametrize("modality", ["fluorescence", "phase_contrast"])
def test_tiled_decoding_equals_whole_image_decoding(modality):
    """A 320 px image in 96 px cores (4 per axis, cells under 48 px wide): same cells, ids
    aside.

    Probabilities are blurred one-hot maps, smooth like a network's: with exact plateaus the
    flooding order, hence a contact pixel's cell, may depend on the window (documented).
    """
    _, labels = generate_image(0, 320, modality)
    perfect = one_hot(three_class_target(labels))
    probs = np.stack([ndi.gaussian_filter(c, 1.0) for c in perfect])
    whole = instances_from_classes(probs)
    tiled = instances_from_classes_tiled(probs, tile=96, margin=48)
    assert whole.max() > 50
    assert tiled.max() == whole.max()
    assert same_partition(whole, tiled)
    # Whole images up to one window take the untiled path.
    assert np.array_equal(instances_from_classes_tiled(probs, tile=512), whole)


# --- prediction and a tiny run ------------------------------------------------------------

class _Perfect(torch.nn.Module):
    """A "model" returning fixed boundary-head logits, for exact Predictor tests."""

    head, out_channels, size_divisor = "boundary", 3, 32

    def __init__(self, target: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(one_hot(target))[None] * 20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)[..., : x.shape[2], : x.shape[3]]


def test_predictor_decodes_instances_for_the_boundary_head():
    labels = touching_discs()
    predictor = Predictor(_Perfect(three_class_target(labels)), head="boundary",
                          tile=64, overlap=0.0, device="cpu")
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    prediction = predictor.predict(image)
    assert prediction.classes.shape == (3, 64, 64)
    assert np.array_equal(prediction.mask, labels > 0)
    np.testing.assert_allclose(prediction.probability, predictor.predict_proba(image), atol=1e-6)
    cells = predictor.predict_instances(image)
    assert cells.max() == 2
    # "components" ignores the classes: the two touching discs are one region.
    assert predictor.predict_instances(image, method="components").max() == 1
    with pytest.raises(ConfigError, match="watershed"):
        predictor.predict_instances(image, method="nope")


def test_batch_prediction_writes_the_boundary_heads_instances(tmp_path):
    labels = touching_discs()
    predictor = Predictor(_Perfect(three_class_target(labels)), head="boundary",
                          tile=64, overlap=0.0, device="cpu")
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    write_tiff(tmp_path / "cells.tif", image)
    result = predict_files(predictor, [tmp_path / "cells.tif"], tmp_path / "out",
                           progress=False, overlay=False, save_prob=True)
    assert result.ok and result.images[0].cells == 2
    written = read_label(tmp_path / "out" / "cells_labels.tif")
    assert np.array_equal(written, predictor.predict_instances(image))
    prob = read_image(tmp_path / "out" / "cells_prob.tif")[..., 0]
    np.testing.assert_allclose(prob, predictor.predict_proba(image), atol=1e-6)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(root, n=10, size=64, seed=5)
    return root


def test_tiny_boundary_run_trains_and_evaluates(synth_root, tmp_path):
    cfg = RunConfig.model_validate({
        "name": "tiny-boundary",
        "data": {"root": str(synth_root), "filter": "all", "val": 2, "test_fraction": 0.2,
                 "crop": 64, "samples_per_epoch": 8},
        "model": {"name": "unet", "head": "boundary", "options": {"tiny": True}},
        "train": {"epochs": 2, "batch_size": 4, "aug": "aug1"},
        "eval": {"bootstrap": 20},
    })
    result = run_pipeline(cfg, tmp_path / "run", progress=False)
    run = result.run_dir
    assert (run / "checkpoints/best.ckpt").is_file()
    summary = json.loads((run / "eval/test/summary.json").read_text())
    assert summary["head"] == "boundary" and summary["n_images"] >= 1
    assert 0.0 <= summary["dice"] <= 1.0 and 0.0 <= summary["f1_iou50"] <= 1.0
    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.head == "boundary" and predictor.model.out_channels == 3
    again = evaluate_run(run, split="test", progress=False, save_masks=False)
    assert again["dice"] == pytest.approx(summary["dice"])
    assert again["f1_iou50"] == pytest.approx(summary["f1_iou50"])
