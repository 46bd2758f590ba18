"""Losses: hand-computed values, both heads, the registry, and gradients that point the right way."""

from __future__ import annotations

import math

import pytest
import torch

from celltune.errors import ConfigError
from celltune.models.build import foreground_probability
from celltune.training.losses import LOSSES, build_loss, focal_loss, soft_dice_loss


def _binary(prob: float, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    logit = math.log(prob / (1 - prob))
    return torch.full((1, 1, 2, 2), logit), torch.full((1, 1, 2, 2), target)


def test_foreground_probability_of_both_heads():
    one = torch.tensor([[[[0.0]]], [[[2.0]]]])
    assert foreground_probability(one).flatten().tolist() == pytest.approx([0.5, 1 / (1 + math.e**-2)])
    two = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # softmax -> (0.25, 0.75)
    assert foreground_probability(two).item() == pytest.approx(0.75)
    assert foreground_probability(two, keepdim=True).shape == (1, 1, 1, 1)


def test_soft_dice_by_hand():
    logits, target = _binary(0.8, 1.0)
    # 4 pixels of p = 0.8 against 4 foreground pixels: 1 - (2 * 3.2 + 1) / (3.2 + 4 + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 7.4 / 8.2, rel=1e-5)


def test_bce_dice_is_the_sum_of_its_parts():
    logits, target = _binary(0.8, 1.0)
    expected = -math.log(0.8) + (1 - 7.4 / 8.2)
    assert build_loss("bce_dice")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert build_loss("bce")(logits, target).item() == pytest.approx(-math.log(0.8), rel=1e-5)


def test_focal_down_weights_easy_pixels():
    easy, target = _binary(0.9, 1.0)
    hard, _ = _binary(0.6, 1.0)
    assert focal_loss(easy, target).item() == pytest.approx(0.1**2 * -math.log(0.9), rel=1e-5)
    ratio_focal = focal_loss(hard, target) / focal_loss(easy, target)
    ratio_ce = build_loss("ce")(hard, target) / build_loss("ce")(easy, target)
    assert ratio_focal > ratio_ce


def test_two_class_head_matches_the_binary_head():
    """A two-class head whose logits differ by the binary logit gives the same losses."""
    torch.manual_seed(0)
    binary = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    two = torch.cat([torch.zeros_like(binary), binary], dim=1)
    for name in ("bce_dice", "dice", "bce", "focal"):
        a = build_loss(name)(binary, target)
        b = build_loss(name)(two, target[:, 0].long())
        assert a.item() == pytest.approx(b.item(), rel=1e-4), name


@pytest.mark.parametrize("name", ["bce_dice", "ce_dice", "dice", "bce", "ce", "focal"])
def test_every_loss_falls_as_predictions_improve(name):
    target = torch.ones(1, 1, 4, 4)
    worse = build_loss(name)(torch.full((1, 1, 4, 4), -1.0), target)
    better = build_loss(name)(torch.full((1, 1, 4, 4), 2.0), target)
    assert better < worse
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    build_loss(name)(logits, target).backward()
    assert (logits.grad < 0).all()  # raising the logit lowers the loss


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(ConfigError, match="valid names are: bce, bce_dice"):
        build_loss("dcie")
    assert set(LOSSES.names()) == {"bce", "bce_dice", "ce", "ce_dice", "dice", "focal"}
