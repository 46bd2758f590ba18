"""Swin-Unet (Cao et al., 2021): a pure-transformer U-Net built from timm's Swin blocks.

Layout, as in the paper (defaults = Swin-T widths, window 8 instead of 7 so that 256-pixel crops
tile exactly):

* patch partition (4x4) + linear embedding to ``embed_dim`` (96) channels, LayerNorm;
* encoder: two Swin blocks (window attention, then shifted-window attention) per stage at
  1/4, 1/8, 1/16 with patch merging in between, then a bottleneck of two blocks at 1/32
  (depths 2-2-2-2, heads 3-6-12-24, widths 96-192-384-768);
* decoder: patch expanding (x2, halves the width), concatenation with the encoder stage of the
  same scale, a linear projection back to the width, two Swin blocks; three times;
* a final x4 patch expanding back to full resolution and a linear head to the logits.

The skips take each encoder stage's output after its Swin blocks, as the paper's figure draws
them (the authors' code taps the stage input instead).

Any input with sides that are multiples of 32 works: each block pads its feature map to whole
windows *before* the cyclic shift, masks the padded tokens out of the attention and crops
back; shifting is skipped along an axis that fits in one window. (timm's own block shifts
before padding, which lets tokens from opposite image edges attend to each other when the map
is not a multiple of the window; the original Swin-Unet only runs at its training size.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from torch import nn

from celltune.errors import ConfigError
from celltune.models.base import INPUT_RULE, MODELS, Built
from celltune.models.weights import load_own_weights

_MASK_CACHE_SIZE = 16
_MASKED = -100.0  # finite (not -inf) so a query whose keys are all padding stays NaN-free


def _bands(size: int, window: int, shift: int) -> list[slice]:
    if not shift:
        return [slice(0, size)]
    return [slice(0, size - window), slice(size - window, size - shift), slice(size - shift, size)]


def window_mask(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """Additive attention mask ``(num_windows, area, area)`` for a padded, shifted map.

    The map ``height x width`` is padded at the bottom/right to whole windows and then rolled
    by ``-shift``. A key is masked when it is padding, or when it lies in a different
    shifted-window region than the query (tokens that wrapped around the edge).
    """
    wh, ww = window
    hp, wp = height + (-height) % wh, width + (-width) % ww
    region = torch.zeros(1, hp, wp, 1)
    for i, rows in enumerate(_bands(hp, wh, shift[0])):
        for j, cols in enumerate(_bands(wp, ww, shift[1])):
            region[:, rows, cols, :] = 3 * i + j
    valid = torch.zeros(1, hp, wp, 1)
    valid[:, :height, :width, :] = 1
    valid = torch.roll(valid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    region_w = window_partition(region, window).view(-1, wh * ww)
    valid_w = window_partition(valid, window).view(-1, wh * ww)
    blocked = (region_w[:, :, None] != region_w[:, None, :]) | (valid_w[:, None, :] == 0)
    return torch.zeros(blocked.shape).masked_fill(blocked, _MASKED)


class SwinBlock(SwinTransformerBlock):
    """timm's Swin Transformer block (W-MSA or SW-MSA + MLP) for feature maps of any size.

    Parameters and the residual/MLP path are timm's; only the windowing step is replaced so
    that padding happens before the shift and padded tokens are masked.

    Args:
        dim: Token channels.
        num_heads: Attention heads.
        window_size: Window side in tokens.
        shifted: Use shifted windows (shift = window // 2).
        mlp_ratio: MLP hidden width / ``dim``.
        drop_path: Stochastic-depth rate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        *,
        shifted: bool,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            dim=dim,
            input_resolution=(window_size, window_size),  # unused: sizes are read per call
            num_heads=num_heads,
            window_size=window_size,
            shift_size=window_size // 2 if shifted else 0,
            always_partition=True,
            dynamic_mask=True,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path,
        )
        self._masks: dict[tuple[object, ...], torch.Tensor | None] = {}
        # PyTorch's fused scaled-dot-product attention: same outputs (to ~1e-6), about 1.3x
        # faster inference on CPU than timm's default explicit softmax path.
        self.attn.fused_attn = True

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        wh, ww = self.window_size
        # A shift along an axis that fits in one window would only split that window.
        shift = (self.shift_size[0] if h > wh else 0, self.shift_size[1] if w > ww else 0)
        hp, wp = h + (-h) % wh, w + (-w) % ww
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, wh * ww, c)
        out = self.attn(windows, mask=self._mask(h, w, shift, x))
        out = window_reverse(out.view(-1, wh, ww, c), self.window_size, hp, wp)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        return out[:, :h, :w, :].contiguous()

    def _mask(self, h: int, w: int, shift: tuple[int, int], x: torch.Tensor) -> torch.Tensor | None:
        wh, ww = self.window_size
        if not any(shift) and h % wh == 0 and w % ww == 0:
            return None
        key = (h, w, shift, x.device, x.dtype)
        if key not in self._masks:
            if len(self._masks) >= _MASK_CACHE_SIZE:  # many tile sizes: start over, stay small
                self._masks.clear()
            self._masks[key] = window_mask(h, w, self.window_size, shift).to(x.device, x.dtype)
        return self._masks[key]


class PatchExpand(nn.Module):
    """Linear expansion then pixel rearrangement: ``(B, H, W, dim) -> (B, sH, sW, out_dim)``."""

    def __init__(self, dim: int, scale: int, out_dim: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, -1).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, -1))


def _stage(dim: int, depth: int, heads: int, window: int, rates: Sequence[float]) -> nn.Sequential:
    return nn.Sequential(
        *(
            SwinBlock(dim, heads, window, shifted=i % 2 == 1, drop_path=rates[i])
            for i in range(depth)
        )
    )


class SwinUNet(nn.Module):
    """Swin-Unet mapping ``(N, C, H, W)`` to ``(N, classes, H, W)`` logits (H, W multiples of 32).

    Args:
        in_channels: Image channels.
        classes: Output logits per pixel.
        embed_dim: Width of the first stage (96 in the paper); stage ``i`` has ``embed_dim * 2**i``.
        depths: Swin blocks per stage; the last entry is the bottleneck.
        num_heads: Attention heads per stage.
        window_size: Attention window side in tokens.
        drop_path: Largest stochastic-depth rate (linearly increasing with encoder depth; the
            decoder stages reuse the rates of the encoder stage they mirror).
    """

    patch_size = 4

    def __init__(
        self,
        in_channels: int,
        classes: int,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        n = len(depths)
        dims = [embed_dim * 2**i for i in range(n)]
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        stage_rates = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(n)]
        p = self.patch_size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=p, stride=p)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.encoder = nn.ModuleList(
            _stage(dims[i], depths[i], num_heads[i], window_size, stage_rates[i]) for i in range(n)
        )
        self.merge = nn.ModuleList(PatchMerging(dims[i]) for i in range(n - 1))
        self.norm = nn.LayerNorm(dims[-1])
        up = list(reversed(range(n - 1)))
        self.expand = nn.ModuleList(PatchExpand(dims[i + 1], 2, dims[i]) for i in up)
        self.fuse = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in up)
        self.decoder = nn.ModuleList(
            _stage(dims[i], depths[i], num_heads[i], window_size, stage_rates[i]) for i in up
        )
        self.norm_up = nn.LayerNorm(embed_dim)
        self.final_expand = PatchExpand(embed_dim, p, embed_dim)
        self.head = nn.Linear(embed_dim, classes)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment: ``(N, C, H, W)`` -> ``(N, classes, H, W)``."""
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # tokens as (B, H, W, C)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if i < len(self.merge):
                skips.append(x)
                x = self.merge[i](x)
        x = self.norm(x)
        for expand, fuse, stage, skip in zip(
            self.expand, self.fuse, self.decoder, reversed(skips), strict=True
        ):
            x = stage(fuse(torch.cat([expand(x), skip], dim=-1)))
        x = self.final_expand(self.norm_up(x))
        return self.head(x).permute(0, 3, 1, 2).contiguous()


TINY_EMBED_DIM = 24


@MODELS.register(
    "swin_unet",
    description="Swin-Unet (Cao et al. 2021): pure transformer U-Net, trained from scratch",
    reference_params="27.2M (Cao et al. 2021)",
    default_weights="none",
    input_rule=INPUT_RULE,
)
def swin_unet(
    *,
    in_channels: int,
    classes: int,
    weights: str | os.PathLike | None,
    window_size: int = 8,
    embed_dim: int = 96,
    drop_path: float = 0.1,
    tiny: bool = False,
) -> Built:
    """Swin-Unet; ``tiny`` narrows it to ``embed_dim=24`` without stochastic depth."""
    if window_size < 1 or embed_dim < 1 or embed_dim % 3:
        raise ConfigError(
            f"swin_unet needs window_size >= 1 and embed_dim a positive multiple of 3 "
            f"(for heads 3-6-12-24), got window_size={window_size}, embed_dim={embed_dim}."
        )
    if tiny:
        embed_dim, drop_path = TINY_EMBED_DIM, 0.0
    net = SwinUNet(
        in_channels, classes, embed_dim=embed_dim, window_size=window_size, drop_path=drop_path
    )
    load_own_weights(net, weights, "swin_unet")
    return Built(net)
