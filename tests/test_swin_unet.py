"""Swin-Unet: windowed attention on any map size, the paper's size, and full-size inputs."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

from celltune.models import count_flops, count_params, create_model
from celltune.models.swin_unet import SwinBlock, SwinUNet, window_mask

M = -100.0




def _block(shifted: bool, window: int = 8, dim: int = 8) -> SwinBlock:
    torch.manual_seed(0)
    return SwinBlock(dim, num_heads=2, window_size=window, shifted=shifted).eval()


def test_window_mask_blocks_padding_keys():
    # 3x2 map, 2x2 windows, no shift: window 1 holds row 2 (real) and row 3 (padding).
    mask = window_mask(3, 2, (2, 2), (0, 0))
    assert mask.shape == (2, 4, 4)
    assert torch.equal(mask[0], torch.zeros(4, 4))
    assert torch.equal(mask[1], torch.tensor([[0.0, 0.0, M, M]] * 4))


def test_window_mask_matches_swin_when_windows_divide_the_map():
    timm_block = SwinTransformerBlock(4, (16, 16), num_heads=1, window_size=8, shift_size=4)
    reference = timm_block.get_attn_mask(torch.zeros(1, 16, 16, 1))
    torch.testing.assert_close(window_mask(16, 16, (8, 8), (4, 4)), reference)


@pytest.mark.parametrize("shifted", [False, True])
def test_block_equals_timm_block_when_windows_divide_the_map(shifted):
    block = _block(shifted)
    x = torch.randn(2, 16, 24, 8)
    with torch.no_grad():
        torch.testing.assert_close(block._attn(x), SwinTransformerBlock._attn(block, x))


def test_shifted_windows_do_not_wrap_around_a_padded_edge():
    # 10 rows, window 8, shift 4: shifted windows are rows 0-3 and rows 4-9 (+ padding).
    block = _block(shifted=True)
    x = torch.randn(1, 10, 8, 8)
    moved = x.clone()
    moved[:, 0, 0] += 5.0
    with torch.no_grad():
        before, after = block._attn(x), block._attn(moved)
    torch.testing.assert_close(after[:, 4:], before[:, 4:])
    assert not torch.allclose(after[:, :4], before[:, :4])


def test_map_smaller_than_window_is_one_window_of_real_tokens():
    # A 3x3 map in an 8x8 window must equal plain attention over its 9 tokens with the
    # relative-position biases of their offsets, as if the window were 3x3.
    block = _block(shifted=True)  # shift is dropped: the map fits in one window
    x = torch.randn(1, 3, 3, 8)
    attn = block.attn
    tokens = x.reshape(9, 8)
    q, k, v = attn.qkv(tokens).reshape(9, 3, 2, 4).permute(1, 2, 0, 3)  # (3, heads, 9, 4)
    pos = [r * 8 + c for r in range(3) for c in range(3)]  # token index inside the 8x8 window
    index = attn.relative_position_index[pos][:, pos]
    bias = attn.relative_position_bias_table[index].permute(2, 0, 1)  # (heads, 9, 9)
    weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale + bias, dim=-1)
    expected = attn.proj((weights @ v).transpose(0, 1).reshape(9, 8)).reshape(1, 3, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(block._attn(x), expected)


@pytest.mark.parametrize("window", [4, 7, 8])
@pytest.mark.parametrize("size", [(64, 64), (96, 128), (32, 160)])
def test_tiny_swin_unet_any_multiple_of_32(window, size):
    model = create_model("swin_unet", in_channels=3, tiny=True, window_size=window).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, *size))
    assert y.shape == (1, 1, *size)
    assert torch.isfinite(y).all()


def test_paper_configuration_size_and_cost():
    # Cao et al. (2021), 224x224 RGB, 9 classes, window 7: 27.17M parameters, 6.16 G(MAC)s.
    with torch.device("meta"):
        net = SwinUNet(3, 9, window_size=7)
    assert count_params(net) == pytest.approx(27.17e6, rel=1e-3)
    assert count_flops(net, 224, in_channels=3) / 2 == pytest.approx(6.16e9, rel=0.02)


def test_decoder_is_transformer_only():
    net = create_model("swin_unet", tiny=True).net
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == ["patch_embed"]  # the patch partition is the only convolution
    blocks = [m for m in net.modules() if isinstance(m, SwinBlock)]
    assert len(blocks) == 14  # 2 x (3 encoder stages + bottleneck + 3 decoder stages)


@pytest.fixture(scope="module")
def full_swin_unet():
    return create_model("swin_unet", window_size=8).eval()


@pytest.mark.parametrize("size", [(256, 256), (384, 512)])
def test_full_size_swin_unet_forward(full_swin_unet, size):
    # About 1-2 s per forward on one CPU thread; the build adds about 2 s once.
    model = full_swin_unet
    with torch.no_grad():
        y = model(torch.rand(1, 1, *size))
    assert y.shape == (1, 1, *size)
    assert torch.isfinite(y).all()
