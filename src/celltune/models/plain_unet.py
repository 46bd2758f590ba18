"""The from-scratch baselines: the U-Net of Ronneberger et al. (2015), with and without BatchNorm.

Architecture as in the paper: four levels of two 3x3 convolutions + ReLU followed by 2x2
max-pooling (channels double from ``width``), a bottleneck of two convolutions, then four levels
of a 2x2 up-convolution halving the channels, concatenation with the skip and two 3x3
convolutions, and a 1x1 convolution to the logits. Two deliberate differences: convolutions are
zero-padded so the output has the input's size (the paper's unpadded version needs overlap-tile
cropping), and ``unet_plain_bn`` inserts BatchNorm between each convolution and its ReLU.
Weights start from He-normal (fan-in) as the paper recommends.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from celltune.errors import ConfigError
from celltune.models.base import INPUT_RULE, MODELS, Built
from celltune.models.weights import load_own_weights

LEVELS = 4
TINY_WIDTH = 4


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (BatchNorm and) ReLU."""
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        # A bias right before BatchNorm is cancelled by its mean subtraction: leave it out.
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PlainUNet(nn.Module):
    """Ronneberger et al. (2015) U-Net with same-size output.

    Args:
        in_channels: Image channels.
        classes: Output logits per pixel.
        width: Channels of the first level (64 in the paper); level ``i`` has ``width * 2**i``.
        batch_norm: Insert BatchNorm after every 3x3 convolution.
        dropout: Dropout rate at the end of the contracting path (the paper used dropout there
            as implicit augmentation; 0 disables it).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        *,
        width: int = 64,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(LEVELS + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(double_conv(cin, w, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(widths[-2], widths[-1], batch_norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(w_low, w, kernel_size=2, stride=2))
            self.up_conv.append(double_conv(2 * w, w, batch_norm))
        self.head = nn.Conv2d(width, classes, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, classes, H, W)`` logits; H and W multiples of 16."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def _build(
    in_channels: int,
    classes: int,
    weights: str | os.PathLike | None,
    *,
    name: str,
    width: int,
    batch_norm: bool,
    dropout: float,
) -> Built:
    if width < 1:
        raise ConfigError(f"{name} option width must be a positive integer, got {width}.")
    net = PlainUNet(in_channels, classes, width=width, batch_norm=batch_norm, dropout=dropout)
    load_own_weights(net, weights, name)
    return Built(net)


_INFO = {"default_weights": "none", "input_rule": INPUT_RULE}


@MODELS.register(
    "unet_plain",
    description="Ronneberger et al. 2015 U-Net from scratch, no normalisation",
    reference_params="31.0M (width 64)",
    **_INFO,
)
def unet_plain(
    *,
    in_channels: int,
    classes: int,
    weights: str | os.PathLike | None,
    width: int = 64,
    dropout: float = 0.0,
    tiny: bool = False,
) -> Built:
    """Plain U-Net (study row 1); ``tiny`` sets ``width`` to 4."""
    return _build(
        in_channels,
        classes,
        weights,
        name="unet_plain",
        width=TINY_WIDTH if tiny else width,
        batch_norm=False,
        dropout=dropout,
    )


@MODELS.register(
    "unet_plain_bn",
    description="Ronneberger et al. 2015 U-Net from scratch, with BatchNorm",
    reference_params="31.0M (width 64)",
    **_INFO,
)
def unet_plain_bn(
    *,
    in_channels: int,
    classes: int,
    weights: str | os.PathLike | None,
    width: int = 64,
    dropout: float = 0.0,
    tiny: bool = False,
) -> Built:
    """Plain U-Net with BatchNorm (study row 2); ``tiny`` sets ``width`` to 4."""
    return _build(
        in_channels,
        classes,
        weights,
        name="unet_plain_bn",
        width=TINY_WIDTH if tiny else width,
        batch_norm=True,
        dropout=dropout,
    )
