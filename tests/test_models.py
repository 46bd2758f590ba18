"""Model zoo: every registered model, both heads, 1 and 3 channels, plus per-architecture facts."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from celltune.errors import ConfigError
from celltune.models import (
    count_flops,
    count_params,
    create_model,
    list_models,
    model_info,
    models_table,
)

NAMES = ["pspnet", "swin_unet", "unet", "unet_plain", "unet_plain_bn", "unetplusplus"]
CASES = [(n, h, c) for n in NAMES for h in ("binary", "two_class") for c in (1, 3)]


def _fixed_batch(in_channels: int, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, in_channels, 64, 64, generator=gen)
    mask = (x[:, :1] > 0.5).float()  # learnable target: bright pixels of channel 0
    return x, (mask[:, 0].long() if head == "two_class" else mask)


def _loss(logits: torch.Tensor, target: torch.Tensor, head: str) -> torch.Tensor:
    if head == "two_class":
        return nn.functional.cross_entropy(logits, target)
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def test_registered_names():
    assert list_models() == NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match="unet_plain_bn") as err:
        create_model("unet_plian")
    assert "Did you mean 'unet_plain'" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "softmax"}, "valid heads are: binary, two_class"),
        ({"in_channels": 0}, "in_channels must be a positive integer"),
        ({"depth": 3}, "has no option 'depth'; its options are: width, dropout, tiny"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("unet_plain", tiny=True, **kwargs)


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean resnet34"):
        create_model("unet", encoder="resnet43")


@pytest.mark.parametrize(("name", "head", "in_channels"), CASES)
def test_tiny_model_contract(name, head, in_channels):
    torch.manual_seed(0)
    model = create_model(name, in_channels=in_channels, head=head, tiny=True)
    out = 1 if head == "binary" else 2
    assert (model.name, model.head, model.in_channels) == (name, head, in_channels)
    assert (model.out_channels, model.size_divisor) == (out, 32)

    model.eval()
    with torch.no_grad():
        for h, w in ((64, 64), (96, 128)):
            assert model(torch.rand(2, in_channels, h, w)).shape == (2, out, h, w)

    model.train()
    x, target = _fixed_batch(in_channels, head)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        opt.zero_grad()
        loss = _loss(model(x), target, head)
        loss.backward()
        if step == 0:
            first = next(model.net.parameters())
            assert first.ndim == 4 and first.shape[1] == in_channels  # the input layer
            assert first.grad is not None and first.grad.abs().sum() > 0
            # DDP without find_unused_parameters needs a gradient for every parameter.
            unused = [k for k, p in model.named_parameters() if p.grad is None]
            assert unused == []
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0]


def test_input_size_rule_is_checked():
    model = create_model("unet_plain", tiny=True)
    with pytest.raises(ValueError, match="multiples of 32, got 48x64"):
        model(torch.rand(1, 1, 48, 64))
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\)"):
        model(torch.rand(1, 3, 64, 64))


def test_model_info_describes_options_and_defaults():
    info = model_info("PSPNet")
    assert info["name"] == "pspnet"
    assert info["default_weights"] == "imagenet"
    assert info["options"] == {"encoder": None, "encoder_depth": 3, "dilated": False, "tiny": False}
    assert model_info("swin_unet")["default_weights"] == "none"
    assert model_info("unet")["input_rule"] == "H and W multiples of 32"


def test_count_flops_counts_a_multiply_add_as_two():
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    assert count_flops(conv, size=(32, 16)) == 2 * 8 * 1 * 9 * 32 * 16


def _double_conv_params(cin: int, cout: int, bn: bool) -> int:
    weights = 9 * cin * cout + 9 * cout * cout
    return weights + (4 * cout if bn else 2 * cout)  # BN: weight+bias x2; else conv biases


@pytest.mark.parametrize("bn", [False, True])
def test_plain_unet_matches_the_paper_layout(bn):
    w = 64
    widths = [w, 2 * w, 4 * w, 8 * w, 16 * w]
    expected = _double_conv_params(1, w, bn)
    expected += sum(_double_conv_params(a, b, bn) for a, b in itertools.pairwise(widths))
    for low, high in itertools.pairwise(widths):
        expected += 4 * high * low + low  # 2x2 up-convolution halving the channels
        expected += _double_conv_params(2 * low, low, bn)
    expected += w + 1  # 1x1 head to one logit
    with torch.device("meta"):
        model = create_model("unet_plain_bn" if bn else "unet_plain")
    assert count_params(model) == expected
    assert 31.0e6 < expected < 31.1e6  # Ronneberger et al.: about 31M


def test_pspnet_drops_only_dead_encoder_stages():
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    ours = create_model("pspnet", in_channels=3).eval()
    reference = smp.PSPNet("resnet34", encoder_weights=None, in_channels=3).eval()
    result = reference.load_state_dict(ours.net.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert {k.split(".")[1] for k in result.missing_keys} == {"layer3", "layer4"}
    dead = count_params(reference.encoder.layer3) + count_params(reference.encoder.layer4)
    assert count_params(ours) == count_params(reference) - dead
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("options", [{"dilated": True}, {"encoder_depth": 4}, {"encoder_depth": 5}])
def test_pspnet_variants_keep_size_and_use_every_parameter(options):
    model = create_model("pspnet", tiny=True, **options)
    y = model(torch.rand(2, 1, 64, 96))
    assert y.shape == (2, 1, 64, 96)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pspnet_rejects_bad_depth():
    with pytest.raises(ConfigError, match="encoder_depth must be 3, 4 or 5"):
        create_model("pspnet", tiny=True, encoder_depth=2)


def test_models_table_rows():
    rows = models_table(size=64, names=["unet_plain", "pspnet"])
    assert [r["name"] for r in rows] == ["unet_plain", "pspnet"]
    plain = rows[0]
    assert plain["params"] == 31_030_593
    # 256x256 FLOPs scale by (256/64)^2 for a fully convolutional network.
    at_256 = models_table(size=256, names=["unet_plain"])[0]["gflops"]
    assert at_256 == pytest.approx(16 * plain["gflops"])
    assert set(plain) >= {"params", "gflops", "input_rule", "default_weights"}


def test_segmenter_state_dict_carries_normalisation():
    model = create_model("unet_plain", tiny=True)
    model.mean.fill_(0.5)
    model.std.fill_(0.25)
    rebuilt = create_model("unet_plain", tiny=True)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
    assert rebuilt.normalizes and not create_model("unet_plain", tiny=True).normalizes


@pytest.mark.parametrize("name", ["unet", "unetplusplus"])
def test_decoder_channels_set_the_decoder_widths(name):
    net = create_model(name, in_channels=1, encoder="tu-test_resnet", weights="none",
                       decoder_channels=[32, 16, 16, 8, 4])
    out_channels = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert 4 in out_channels and 256 not in out_channels  # SMP's default widths are gone
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("bad", [[128, 64, 32], [128, 64, 32, 16, 0], [128, 64, 32, 16, 8.5]])
def test_decoder_channels_must_be_five_positive_integers(bad):
    with pytest.raises(ConfigError, match="decoder_channels must be five positive integers"):
        create_model("unet", in_channels=1, weights="none", decoder_channels=bad)
