"""What every model in the zoo shares: the registry, the heads, and the :class:`Segmenter` wrapper.

A factory registered in :data:`MODELS` builds the bare network and says which input
normalisation its weights expect (:class:`Built`); :func:`celltune.models.create_model` wraps it
in a :class:`Segmenter`, so callers always feed images scaled to ``[0, 1]`` per channel and
never need to know whether ImageNet statistics apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from celltune.registry import Registry

MODELS: Registry = Registry("model")

#: Output channels (logits) per head: ``binary`` -> sigmoid, ``two_class`` -> softmax over
#: background/cell, ``boundary`` -> softmax over background/interior/boundary (instance-aware:
#: the boundary class separates touching cells, see
#: :func:`celltune.inference.instances.instances_from_classes`), ``distance`` -> two sigmoids:
#: the foreground and each cell's normalised distance to its own border (instance-aware: the
#: distance peaks seed the cells, see :func:`celltune.inference.instances.instances_from_distance`).
HEADS: dict[str, int] = {"binary": 1, "two_class": 2, "boundary": 3, "distance": 2}

#: The training target (:data:`celltune.data.targets.TARGETS`) each head learns.
HEAD_TARGETS: dict[str, str] = {"binary": "binary", "two_class": "two_class",
                                "boundary": "three_class", "distance": "distance"}

#: Heads whose outputs carry their own instance decoding (not only a foreground mask).
INSTANCE_HEADS: tuple[str, ...] = ("boundary", "distance")

#: Every model accepts inputs whose height and width are multiples of this.
SIZE_DIVISOR = 32

INPUT_RULE = f"H and W multiples of {SIZE_DIVISOR}"


@dataclass
class Built:
    """What a registered factory returns.

    Attributes:
        net: The network; maps normalised ``(N, C, H, W)`` images to ``(N, classes, H, W)`` logits.
        mean: Per-channel mean to subtract before ``net`` (None: no normalisation).
        std: Per-channel standard deviation to divide by (None: no normalisation).
    """

    net: nn.Module
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


class Segmenter(nn.Module):
    """A segmentation network plus the input normalisation its weights expect.

    ``mean`` and ``std`` are persistent buffers: a checkpoint of a model built with ImageNet
    weights carries its normalisation, so rebuilding it with ``weights="none"`` and loading the
    state dict restores exactly the same function.

    Args:
        net: The bare network (kept as ``.net``).
        name: Registered model name.
        head: ``"binary"``, ``"two_class"``, ``"boundary"`` or ``"distance"`` (see :data:`HEADS`).
        in_channels: Number of image channels the network takes.
        mean: Per-channel mean (defaults to zeros: identity).
        std: Per-channel standard deviation (defaults to ones: identity).
    """

    size_divisor: int = SIZE_DIVISOR

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        head: str,
        in_channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.head = head
        self.in_channels = in_channels
        self.out_channels = HEADS[head]
        mean_t = torch.zeros(in_channels) if mean is None else torch.as_tensor(mean)
        std_t = torch.ones(in_channels) if std is None else torch.as_tensor(std)
        self.register_buffer("mean", mean_t.float().view(1, in_channels, 1, 1))
        self.register_buffer("std", std_t.float().view(1, in_channels, 1, 1))

    @property
    def normalizes(self) -> bool:
        """True when the buffers change the input (ImageNet-style weights)."""
        return bool(torch.any(self.mean != 0) or torch.any(self.std != 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C, H, W)`` images in ``[0, 1]`` to ``(N, out_channels, H, W)`` logits."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check_input(x)
        return self.net((x - self.mean) / self.std)

    def _check_input(self, x: torch.Tensor) -> None:
        # A shape bug in the caller should fail here, with the rule, not deep in a decoder.
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"{self.name} needs {INPUT_RULE}, got {h}x{w}")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head={self.head!r}, in_channels={self.in_channels}"
