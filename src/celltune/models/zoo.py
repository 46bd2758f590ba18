"""The model zoo's public entry points: build a model by name, list and describe the models.

Example:
    >>> import torch
    >>> from celltune.models import create_model
    >>> model = create_model("unet", in_channels=1, head="binary", tiny=True)
    >>> model(torch.rand(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from celltune.errors import ConfigError
from celltune.models.base import HEADS, INPUT_RULE, MODELS, SIZE_DIVISOR, Built, Segmenter

#: How :func:`count_flops` counts, for captions next to the numbers.
FLOP_CONVENTION = "1 multiply-add = 2 FLOPs; convolutions and matrix products only"
_FACTORY_ARGS = {"in_channels", "classes", "weights"}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def _options(factory: Callable[..., Built]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.name not in _FACTORY_ARGS}


def model_info(name: str) -> dict[str, Any]:
    """Describe a registered model.

    Returns:
        ``name``, ``description``, ``default_weights`` (what the study used), ``input_rule``,
        ``size_divisor``, ``reference_params`` (published count) and ``options`` (name ->
        default; every model has ``tiny``, a narrow variant for tests).

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
    """
    info = MODELS.info(name)
    return {
        "name": name.lower(),
        "description": info.get("description", ""),
        "default_weights": info.get("default_weights", "none"),
        "input_rule": info.get("input_rule", INPUT_RULE),
        "size_divisor": SIZE_DIVISOR,
        "reference_params": info.get("reference_params", ""),
        "options": _options(MODELS.get(name)),
    }


def create_model(
    name: str,
    *,
    in_channels: int = 1,
    head: str = "binary",
    weights: str | os.PathLike | None = "none",
    **options: Any,
) -> Segmenter:
    """Build a registered model, ready for ``[0, 1]``-scaled ``(N, C, H, W)`` float images.

    Args:
        name: Registered name (see :func:`list_models`), case-insensitive.
        in_channels: Image channels (1 for grayscale, 3 for RGB).
        head: ``"binary"`` (1 logit, sigmoid), ``"two_class"`` (2 logits, softmax),
            ``"boundary"`` (3 logits, softmax over background / interior / boundary) or
            ``"distance"`` (2 logits, each a sigmoid: foreground and normalised distance to
            the cell's border).
        weights: ``"none"``, ``"imagenet"`` (SMP models; read from the Hugging Face cache), or
            the path of a ``.pth``/``.pt``/``.safetensors`` state dict (an encoder's for SMP
            models, the whole network's for the others).
        **options: Model options, see ``model_info(name)["options"]``; ``tiny=True`` builds a
            narrow variant for tests.

    Returns:
        A :class:`Segmenter` with ``.name``, ``.head``, ``.in_channels``, ``.out_channels``,
        ``.size_divisor``; its forward returns logits of the input's height and width.

    Raises:
        ConfigError: unknown name, head, option or a bad value.
        WeightsError: weights unavailable offline, unreadable, or not fitting the model.
    """
    factory = MODELS.get(name)
    key = name.lower()
    if head not in HEADS:
        raise ConfigError(f"Unknown head {head!r}; valid heads are: {', '.join(HEADS)}.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}.")
    valid = _options(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"Model {key!r} has no option {', '.join(map(repr, unknown))}; its options are: "
            f"{', '.join(valid)}."
        )
    built = factory(in_channels=in_channels, classes=HEADS[head], weights=weights, **options)
    model = Segmenter(
        built.net, name=key, head=head, in_channels=in_channels, mean=built.mean, std=built.std
    )
    model.weights = "none" if weights is None else str(weights)
    model.options = dict(options)
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: int | tuple[int, int] = 256, in_channels: int = 1) -> int:
    """FLOPs of one eval-mode forward on a ``1 x in_channels x size x size`` input.

    A multiply-add counts as 2 FLOPs (the convention of ``torch.utils.flop_counter``); only
    convolutions and matrix products are counted, not elementwise work or normalisation.
    """
    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, h, w, device=device))
    finally:
        model.train(training)
    return int(counter.get_total_flops())


def models_table(size: int = 256, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per model (full size, 1 channel, binary head, no pretrained weights).

    Rows hold ``name``, ``params``, ``gflops`` (at ``1 x 1 x size x size``, see
    :data:`FLOP_CONVENTION`), ``input_rule``, ``default_weights``, ``reference_params`` and
    ``description``. Models are built on the ``meta`` device: shapes only, no memory, no
    initialisation, so the whole table takes about a second.
    """
    rows = []
    for name in names or list_models():
        with torch.device("meta"):
            # .to: SMP creates a 1-channel first conv with a legacy constructor that ignores
            # the default device.
            model = create_model(name, in_channels=1).to("meta")
        info = model_info(name)
        rows.append(
            {
                "name": info["name"],
                "params": count_params(model),
                "gflops": count_flops(model, size) / 1e9,
                "input_rule": info["input_rule"],
                "default_weights": info["default_weights"],
                "reference_params": info["reference_params"],
                "description": info["description"],
            }
        )
    return rows
