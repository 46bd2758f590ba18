"""Encoder weights: local files (torchvision and SMP layouts), the ImageNet cache, offline errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from celltune.errors import WeightsError
from celltune.models import create_model
from celltune.models.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adapt_first_conv,
    best_prefix,
    smp_imagenet_repo,
)


@pytest.fixture(scope="module")
def resnet34_state() -> dict[str, torch.Tensor]:
    """A torchvision resnet34 state dict (random, seeded), classifier included."""
    torch.manual_seed(1)
    return torchvision.models.resnet34(weights=None).state_dict()


@pytest.fixture(scope="module")
def torchvision_file(resnet34_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet34_torchvision.pth"
    torch.save(resnet34_state, path)
    return path


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """An empty Hugging Face cache under tmp_path and no Hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def _encoder(model):
    return model.net.encoder


def test_torchvision_resnet34_file_loads_into_unet(torchvision_file, resnet34_state):
    model = create_model("unet", in_channels=3, weights=torchvision_file)
    enc = _encoder(model).state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.2.bn2.running_mean"):
        torch.testing.assert_close(enc[key], resnet34_state[key])
    assert "fc.weight" not in enc
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(IMAGENET_STD))


def test_one_channel_first_conv_sums_rgb_and_averages_stats(torchvision_file, resnet34_state):
    model = create_model("unet", in_channels=1, weights=torchvision_file)
    conv = _encoder(model).conv1.weight
    torch.testing.assert_close(conv, resnet34_state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model.mean.flatten().tolist() == pytest.approx([0.449])  # (0.485+0.456+0.406)/3
    assert model.std.flatten().tolist() == pytest.approx([0.226])  # (0.229+0.224+0.225)/3


def test_adapt_first_conv_cycles_and_rescales_beyond_three_channels():
    w = torch.arange(6.0).reshape(1, 3, 1, 2)
    out = adapt_first_conv(w, 4)
    expected = torch.cat([w, w[:, :1]], dim=1) * 3 / 4
    torch.testing.assert_close(out, expected)


def test_smp_layout_safetensors_loads_and_changes_weights(resnet34_state, tmp_path):
    encoder_state = {k: v for k, v in resnet34_state.items() if not k.startswith("fc.")}
    path = tmp_path / "encoder.safetensors"
    save_file(encoder_state, str(path))
    torch.manual_seed(5)
    fresh = create_model("unetplusplus", in_channels=3)
    loaded = create_model("unetplusplus", in_channels=3, weights=path)
    key = "layer2.1.conv2.weight"
    assert not torch.equal(_encoder(fresh).state_dict()[key], encoder_state[key])
    torch.testing.assert_close(_encoder(loaded).state_dict()[key], encoder_state[key])


def test_whole_smp_model_state_dict_loads_its_encoder(tmp_path):
    torch.manual_seed(2)
    source = create_model("unet", in_channels=3)
    path = tmp_path / "unet.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # keys "net.encoder.conv1.weight", ...
    model = create_model("unet", in_channels=3, weights=path)
    for key, value in _encoder(source).state_dict().items():
        torch.testing.assert_close(_encoder(model).state_dict()[key], value)


def test_pspnet_loads_full_resnet_then_drops_unused_stages(torchvision_file, resnet34_state):
    model = create_model("pspnet", in_channels=3, weights=torchvision_file)
    enc = _encoder(model)
    assert not hasattr(enc, "layer3") and not hasattr(enc, "layer4")
    torch.testing.assert_close(enc.layer2[0].conv1.weight, resnet34_state["layer2.0.conv1.weight"])


def test_wrong_keys_fail_clearly(resnet34_state, tmp_path):
    renamed = {k.replace("layer1.", "stage1."): v for k, v in resnet34_state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(WeightsError) as err:
        create_model("unet", weights=path)
    message = str(err.value)
    assert str(path) in message and "encoder 'resnet34'" in message
    assert "missing keys (layer1.0.conv1.weight" in message
    assert "unexpected keys (stage1.0.conv1.weight" in message


def test_other_architecture_fails_with_shapes(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="mis-shaped keys"):
        create_model("unet", weights=path)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.pth", None, "does not exist"),
        ("weights.h5", b"x", "unsupported suffix"),
        ("broken.safetensors", b"not a safetensors file", "cannot be read"),
        ("list.pt", [1, 2], "does not hold a state dict"),
    ],
)
def test_unusable_files(tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        create_model("unet_plain", tiny=True, weights=path)


@pytest.mark.parametrize("name", ["swin_unet", "unet_plain", "unet_plain_bn"])
def test_scratch_models_reload_their_own_state_dict(name, tmp_path):
    torch.manual_seed(3)
    source = create_model(name, tiny=True).eval()
    path = tmp_path / "model.safetensors"
    save_file(source.net.state_dict(), str(path))
    model = create_model(name, tiny=True, weights=path).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    with pytest.raises(WeightsError, match="trained from scratch and has no ImageNet weights"):
        create_model(name, tiny=True, weights="imagenet")


def test_scratch_model_rejects_another_models_file(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(create_model("unet_plain", tiny=True).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit model 'swin_unet'"):
        create_model("swin_unet", tiny=True, weights=path)


def test_best_prefix_picks_the_prefix_that_matches_most_keys():
    keys = ["model.net.encoder.conv1.weight", "model.net.encoder.layer1.0.conv1.weight", "x.y"]
    assert best_prefix(keys, ["conv1.weight", "layer1.0.conv1.weight"]) == "model.net.encoder."
    assert best_prefix(["a.b"], ["c"]) == ""


def test_imagenet_offline_with_empty_cache_fails_fast(offline_hf):
    start = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        create_model("unet", weights="imagenet")
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "smp-hub/resnet34.imagenet" in message and str(offline_hf) in message
    assert "`--weights PATH`" in message and "hf download" in message


def test_imagenet_with_unreachable_hub_fails_fast(offline_hf, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="cannot be reached"):
        create_model("pspnet", weights="imagenet")
    assert time.perf_counter() - start < 2.0


def test_imagenet_from_prefilled_cache_works_offline(offline_hf, resnet34_state):
    repo, revision = smp_imagenet_repo("resnet34")
    snapshot = offline_hf / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    encoder_state = {k: v for k, v in resnet34_state.items() if not k.startswith("fc.")}
    save_file(encoder_state, str(snapshot / "model.safetensors"))
    stats = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}
    (snapshot / "config.json").write_text(json.dumps(stats))
    model = create_model("unet", in_channels=3, weights="imagenet")
    torch.testing.assert_close(_encoder(model).conv1.weight, encoder_state["conv1.weight"])
    # Normalisation comes from the weights' own config, inside the model.
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(stats["mean"]))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(stats["std"]))
    gray = create_model("unet", in_channels=1, weights="imagenet")
    assert gray.mean.item() == pytest.approx(0.5) and gray.std.item() == pytest.approx(0.3)


def test_imagenet_needs_an_smp_encoder():
    with pytest.raises(WeightsError, match="no ImageNet weights for encoder 'tu-test_resnet'"):
        create_model("unet", tiny=True, weights="imagenet")
