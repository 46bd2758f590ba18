"""Segmentation losses for the binary (1 logit), two-class (2), boundary (3) and distance (2) heads.

Every loss takes ``(logits, target)``: for the binary head logits are ``(N, 1, H, W)`` and
the target is float ``(N, 1, H, W)`` in {0, 1}; for the softmax heads logits are
``(N, C, H, W)`` and the target is int64 ``(N, H, W)`` of class indices (``two_class``: 0
background / 1 cell; ``boundary``: 0 background / 1 interior / 2 boundary). Names that only
make sense for one head are mapped to their counterpart for the others, so one recipe works
for every head:

* cross-entropy is binary for one logit and categorical for several;
* soft Dice is the foreground's for one logit and, for a softmax, the mean over the
  non-background classes (each pooled over the batch). For two classes that is the cell
  class alone, as before; for the boundary head it is the mean of the interior's and the
  boundary's Dice, so the thin boundary class, a few percent of the pixels, weighs as much as
  the interior. The background is left out: its Dice is close to 1 on any sensible output
  and would only dilute the gradient.

So the default ``bce_dice`` on a boundary head is categorical cross-entropy + that
two-class-mean soft Dice; no extra loss name is needed.

The ``distance`` head's two channels are independent sigmoids: channel 0 the foreground,
channel 1 each cell's normalised distance to its border; its target is float
``(N, 2, H, W)`` (mask, distance). :func:`build_loss` with ``head="distance"`` applies the
named loss to channel 0 exactly as to a binary head's logit and adds the mean squared error
between ``sigmoid(channel 1)`` and the distance target over all pixels
(:class:`DistanceHeadLoss`). The default ``bce_dice`` is therefore BCE + Dice on the
foreground + MSE on the distance map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from celltune.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def _pooled_dice(prob: torch.Tensor, tgt: torch.Tensor, smooth: float) -> torch.Tensor:
    inter = (prob * tgt).sum()
    return (2.0 * inter + smooth) / (prob.sum() + tgt.sum() + smooth)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, pooled over the batch.

    One logit: the foreground's Dice. Several (softmax): the mean Dice of the classes
    1..C-1, background excluded (one class for ``two_class``, interior and boundary for
    ``boundary``). Pooling over the batch (rather than averaging per image) keeps crops
    without any cell from producing a large, noisy gradient.
    """
    if logits.shape[1] == 1:
        prob = torch.sigmoid(logits.float()[:, 0])
        return 1.0 - _pooled_dice(prob, target[:, 0].float(), smooth)
    probs = torch.softmax(logits.float(), dim=1)
    scores = [
        _pooled_dice(probs[:, c], (target == c).float(), smooth)
        for c in range(1, logits.shape[1])
    ]
    return 1.0 - torch.stack(scores).mean()


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


LOSSES.register(
    "bce_dice",
    description="cross-entropy + soft Dice (default; boundary head: Dice of interior and boundary)",
)(bce_dice_loss)
LOSSES.register("ce_dice", description="alias of bce_dice")(bce_dice_loss)
LOSSES.register("dice", description="soft Dice only")(soft_dice_loss)
LOSSES.register("bce", description="binary cross-entropy (cross-entropy for softmax heads)")(
    ce_loss
)
LOSSES.register("ce", description="cross-entropy (binary cross-entropy for one logit)")(ce_loss)
LOSSES.register("focal", description="focal loss, gamma 2")(focal_loss)


def distance_mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``sigmoid(logits[:, 1])`` against ``target[:, 1]``, all pixels.

    The distance head's regression term: ``logits`` and ``target`` are ``(N, 2, H, W)``.
    """
    return F.mse_loss(torch.sigmoid(logits.float()[:, 1]), target.float()[:, 1])


class DistanceHeadLoss:
    """The ``distance`` head's loss: a foreground loss on channel 0, plus :func:`distance_mse`.

    A class rather than a closure, so a module holding it can be pickled (spawned workers).
    """

    def __init__(self, foreground: LossFn) -> None:
        self.foreground = foreground

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.foreground(logits[:, :1], target[:, :1]) + distance_mse(logits, target)

    def __repr__(self) -> str:
        return f"DistanceHeadLoss({getattr(self.foreground, '__name__', self.foreground)!r})"


#: Heads whose loss wraps the named one (the others use it as it is).
HEAD_LOSSES: dict[str, Callable[[LossFn], LossFn]] = {"distance": DistanceHeadLoss}


def build_loss(name: str, head: str = "binary") -> LossFn:
    """Look up a loss by name, adapted to ``head``; unknown names raise ConfigError listing the
    valid ones.

    For the ``binary``, ``two_class`` and ``boundary`` heads the named loss is used as it is
    (it adapts to the channel count); for ``distance`` it is wrapped in
    :class:`DistanceHeadLoss`.
    """
    loss = LOSSES.get(name)
    wrap = HEAD_LOSSES.get(head)
    return loss if wrap is None else wrap(loss)
