"""Segmentation losses for binary (1 logit) and two-class (2 logits) heads.

Every loss takes ``(logits, target)``: for the binary head logits are ``(N, 1, H, W)`` and
the target is float ``(N, 1, H, W)`` in {0, 1}; for the two-class head logits are
``(N, 2, H, W)`` and the target is int64 ``(N, H, W)``. Names that only make sense for one
head are mapped to their counterpart for the other (``bce_dice`` on a two-class head is
cross-entropy + Dice), so one recipe works for both heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from celltune.models.build import foreground_probability
from celltune.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def _foreground_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return target[:, 0].to(logits.dtype)
    return (target == 1).to(logits.dtype)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the foreground, pooled over the batch.

    Pooling over the batch (rather than averaging per image) keeps crops without any cell
    from producing a large, noisy gradient.
    """
    prob = foreground_probability(logits)
    tgt = _foreground_target(logits, target).float()
    inter = (prob * tgt).sum()
    denom = prob.sum() + tgt.sum()
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def _pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return F.cross_entropy(logits.float(), target.long(), reduction="none")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) without class weighting: CE scaled by (1 - p_t)^gamma."""
    ce = _pixel_ce(logits, target)
    p_t = torch.exp(-ce)
    return ((1.0 - p_t) ** gamma * ce).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel cross-entropy plus :func:`soft_dice_loss`."""
    return _pixel_ce(logits, target).mean() + soft_dice_loss(logits, target)


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel cross-entropy (binary for one logit)."""
    return _pixel_ce(logits, target).mean()


LOSSES.register("bce_dice", description="cross-entropy + soft Dice (default)")(bce_dice_loss)
LOSSES.register("ce_dice", description="alias of bce_dice")(bce_dice_loss)
LOSSES.register("dice", description="soft Dice only")(soft_dice_loss)
LOSSES.register("bce", description="binary cross-entropy (cross-entropy for two classes)")(
    ce_loss
)
LOSSES.register("ce", description="cross-entropy (binary cross-entropy for one logit)")(ce_loss)
LOSSES.register("focal", description="focal loss, gamma 2")(focal_loss)


def build_loss(name: str) -> LossFn:
    """Look up a loss by name; unknown names raise ConfigError listing the valid ones."""
    return LOSSES.get(name)
