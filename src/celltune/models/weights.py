"""Initial weights: ``none``, ``imagenet`` (offline-friendly) or a local state-dict file.

ImageNet encoder weights come from the same place segmentation_models.pytorch takes them: the
Hugging Face Hub repository and pinned revision listed in SMP's encoder table (for example
``smp-hub/resnet34.imagenet``). A pre-filled Hugging Face cache works offline. When the files
are not cached and the Hub is unreachable we fail in about a second with a sentence saying how
to provide them, instead of letting the Hub client retry for half a minute.

Local files may be ``.pth``/``.pt``/``.ckpt`` (``torch.load`` with ``weights_only=True``) or
``.safetensors``. Keys are matched after stripping the prefix that fits the target best, so an
SMP encoder state dict (``conv1.weight``), a torchvision ``resnet34`` state dict (same keys plus
the ``fc`` classifier, which is dropped) and a whole SMP model (``encoder.conv1.weight``) all
load into an encoder; loading is strict and reports missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from celltune.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

STATE_DICT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
_HUB_FILES = ("config.json", "model.safetensors")
_TRUTHY = {"1", "on", "yes", "true"}
# Counters, not weights: files exported without them are still complete.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_SHOWN_KEYS = 3


def is_none(weights: str | os.PathLike | None) -> bool:
    """True for "no pretrained weights" (``None`` or ``"none"``)."""
    return weights is None or str(weights).lower() == "none"


def is_imagenet(weights: str | os.PathLike | None) -> bool:
    """True for the ``"imagenet"`` keyword."""
    return weights is not None and str(weights).lower() == "imagenet"


def channel_stats(
    mean: Sequence[float], std: Sequence[float], in_channels: int
) -> tuple[list[float], list[float]]:
    """Per-channel statistics for ``in_channels`` inputs from RGB statistics.

    One channel gets the average of the three (the first conv sums its RGB kernels, see
    :func:`adapt_first_conv`); more channels cycle through R, G, B as the kernels do.
    """
    if in_channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return [mean[i % 3] for i in range(in_channels)], [std[i % 3] for i in range(in_channels)]


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-conv kernel into one for ``in_channels`` inputs, as SMP does.

    One channel: sum over RGB (a gray image replicated to RGB gives the same response).
    Otherwise: cycle through the RGB kernels and rescale by ``3 / in_channels``.
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.ckpt``/``.bin`` or ``.safetensors``.

    A checkpoint dict holding a ``state_dict`` (Lightning) or ``model`` entry is unwrapped.

    Raises:
        WeightsError: the file is missing, unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist; pass 'none', 'imagenet' or the path of a "
            f"{', '.join(STATE_DICT_SUFFIXES)} file."
        )
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(
            f"Weights file {path} has an unsupported suffix; use one of {', '.join(STATE_DICT_SUFFIXES)}."
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decoding failure is the file's fault, say which file
        raise WeightsError(f"Weights file {path} cannot be read ({err}).") from err
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"Weights file {path} does not hold a state dict (name -> tensor).")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"Weights file {path} holds no tensors.")
    return tensors


def best_prefix(keys: Iterable[str], target_keys: Iterable[str]) -> str:
    """The key prefix whose removal makes the most file keys match the target's keys.

    Ties go to the shortest prefix; ``""`` when nothing matches.
    """
    target = set(target_keys)
    keys = list(keys)
    scores: dict[str, int] = {}
    for key in keys:
        cut = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
        for i in cut:
            if key[i:] in target:
                scores[key[:i]] = scores.get(key[:i], 0) + 1
    if not scores:
        return ""
    return max(scores, key=lambda p: (scores[p], -len(p)))


def load_weights(
    target: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str,
    drop: Sequence[str] = (),
    adapt_in_channels: int | None = None,
) -> None:
    """Load ``state`` into ``target`` strictly, after prefix stripping and first-conv adaptation.

    Args:
        target: Module to fill (an encoder or a whole network).
        state: Tensors by name, e.g. from :func:`read_state_dict`.
        source: File or repository name, for messages.
        what: What ``target`` is ("encoder 'resnet34'"), for messages.
        drop: Key prefixes to ignore (e.g. ``("fc.",)``: the ImageNet classifier).
        adapt_in_channels: When set, an RGB first conv is adapted to this many input channels.

    Raises:
        WeightsError: missing, unexpected or mis-shaped keys (names a few of each).
    """
    expected = target.state_dict()
    prefix = best_prefix(state, expected)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    picked = {k: v for k, v in picked.items() if not k.startswith(tuple(drop)) or k in expected}
    if adapt_in_channels is not None:
        _adapt_first_conv_in(picked, expected, adapt_in_channels)
    problems = _mismatches(picked, expected)
    if problems:
        raise WeightsError(
            f"Weights from {source} do not fit {what}: {problems}; pass a state dict saved from "
            f"the same architecture (prefix {prefix!r} was stripped)."
        )
    merged = dict(expected)
    merged.update(picked)
    target.load_state_dict(merged, strict=True)


def _adapt_first_conv_in(
    picked: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], in_channels: int
) -> None:
    key = next((k for k, v in expected.items() if v.ndim == 4), None)
    if key is None or key not in picked:
        return
    have, want = picked[key], expected[key]
    if have.shape[1] == 3 and have.shape[1] != want.shape[1] and have.shape[0] == want.shape[0]:
        picked[key] = adapt_first_conv(have, in_channels)


def _mismatches(picked: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    missing = [k for k in expected if k not in picked and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in picked if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in picked.items()
        if k in expected and v.shape != expected[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = ", ".join(items[:_SHOWN_KEYS]) + (", ..." if len(items) > _SHOWN_KEYS else "")
            parts.append(f"{len(items)} {label} keys ({shown})")
    return "; ".join(parts)


def load_own_weights(net: nn.Module, weights: str | os.PathLike | None, name: str) -> None:
    """Initial weights for a model trained from scratch: ``none`` or its own full state dict.

    Raises:
        WeightsError: ``imagenet`` was asked for, or the file does not fit the model.
    """
    if is_none(weights):
        return
    if is_imagenet(weights):
        raise WeightsError(
            f"{name} is trained from scratch and has no ImageNet weights; use weights 'none' "
            "or the path of a state dict saved from this model."
        )
    state = read_state_dict(weights)  # type: ignore[arg-type]
    load_weights(net, state, source=str(weights), what=f"model {name!r}")


# ---------------------------------------------------------------- ImageNet via the HF cache


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when the user asked the Hugging Face client to stay offline."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds.

    Name resolution can hang far longer than a socket timeout, so the probe runs in a daemon
    thread and we stop waiting for it after ``timeout``.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def smp_imagenet_repo(encoder: str) -> tuple[str, str]:
    """``(repo_id, revision)`` of SMP's ImageNet weights for ``encoder``.

    Raises:
        WeightsError: SMP has no ImageNet weights for this encoder.
    """
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        raise WeightsError(
            f"segmentation_models.pytorch has no ImageNet weights for encoder {encoder!r}; "
            "use weights 'none' or a local file with `--weights PATH`."
        )
    return settings["repo_id"], settings["revision"]


def imagenet_encoder_weights(
    encoder: str, in_channels: int
) -> tuple[dict[str, torch.Tensor], list[float], list[float], str]:
    """SMP's ImageNet weights for ``encoder``: state dict, mean, std, source name.

    Raises:
        WeightsError: not cached and the Hub is offline or unreachable (within ~1 s).
    """
    from safetensors.torch import load_file

    repo_id, revision = smp_imagenet_repo(encoder)
    files = _hub_files(repo_id, revision)
    state = load_file(files["model.safetensors"], device="cpu")
    config = json.loads(Path(files["config.json"]).read_text())
    mean, std = channel_stats(
        config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD), in_channels
    )
    return state, mean, std, f"{repo_id}@{revision[:8]}"


def _hub_files(repo_id: str, revision: str) -> dict[str, str]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache = hf_cache_dir()
    found = {
        name: try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision)
        for name in _HUB_FILES
    }
    if all(isinstance(path, str) for path in found.values()):
        return found  # type: ignore[return-value]
    advice = (
        f"ImageNet weights {repo_id} are not in the Hugging Face cache {cache} and the Hub "
        f"cannot be reached; on a connected machine run `hf download {repo_id} --revision "
        f"{revision}` and copy the cache here (or point HF_HOME at it), or pass a local encoder "
        "file with `--weights PATH`."
    )
    if hub_offline() or not hub_reachable():
        raise WeightsError(advice)
    try:
        return {
            name: hf_hub_download(repo_id, name, revision=revision, cache_dir=cache)
            for name in _HUB_FILES
        }
    except Exception as err:  # the hub client raises many types; the advice is the same
        raise WeightsError(advice) from err
