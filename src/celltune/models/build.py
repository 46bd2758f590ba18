"""A network from a run's model config, and the one rule from logits to foreground probability.

Example:
    >>> import torch
    >>> from celltune.config import ModelConfig
    >>> net = build_network(ModelConfig(name="unet_plain", options={"tiny": True}), 1)
    >>> foreground_probability(net(torch.zeros(1, 1, 64, 64))).shape
    torch.Size([1, 64, 64])
"""

from __future__ import annotations

import torch

from celltune.config import ModelConfig
from celltune.models.zoo import create_model


def build_network(model_cfg: ModelConfig, in_channels: int) -> torch.nn.Module:
    """The :class:`~celltune.models.Segmenter` a model config describes."""
    options = dict(model_cfg.options)
    if model_cfg.encoder is not None:
        options["encoder"] = model_cfg.encoder
    return create_model(
        model_cfg.name,
        in_channels=in_channels,
        head=model_cfg.head,
        weights=model_cfg.weights,
        **options,
    )


#: Heads whose channels are independent sigmoids (not a softmax over the channels).
SIGMOID_HEADS = ("binary", "distance")


def foreground_probability(
    logits: torch.Tensor, keepdim: bool = False, head: str | None = None
) -> torch.Tensor:
    """``(N, 1|2|3, H, W)`` logits -> foreground probability, in float32.

    The ``binary`` head's single logit goes through a sigmoid; the ``two_class`` head's two
    logits through a softmax, whose channel 1 is the foreground; for the ``boundary`` head
    (background / interior / boundary) the foreground is everything but the background,
    ``1 - P(background)``. The ``distance`` head also has two channels, so it needs ``head``:
    its foreground is the sigmoid of channel 0, exactly as for ``binary`` (channel 1 is the
    distance map). Without ``head`` the channel count decides (1 binary, 2 two_class,
    3 boundary). The result is ``(N, H, W)``, or ``(N, 1, H, W)`` with ``keepdim``.
    """
    logits = logits.float()
    if logits.shape[1] == 1 or head == "distance":
        prob = torch.sigmoid(logits[:, 0])
    elif logits.shape[1] == 2:
        prob = torch.softmax(logits, dim=1)[:, 1]
    else:
        prob = 1.0 - torch.softmax(logits, dim=1)[:, 0]
    return prob[:, None] if keepdim else prob


def class_probabilities(logits: torch.Tensor, head: str | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` logits -> per-channel probabilities, in float32, same shape.

    A sigmoid per channel for the ``binary`` and ``distance`` heads (the latter: foreground,
    normalised distance), a softmax over the channels otherwise. Without ``head`` a single
    channel means sigmoid, several a softmax.
    """
    logits = logits.float()
    if logits.shape[1] == 1 or head in SIGMOID_HEADS:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)
