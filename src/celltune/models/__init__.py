"""The model zoo: U-Net, U-Net++, PSPNet (SMP), Swin-Unet and plain U-Nets behind one registry.

Every model is built by :func:`create_model` and returned as a :class:`Segmenter`: it takes
float32 ``(N, C, H, W)`` images scaled to ``[0, 1]`` per channel (H, W multiples of 32),
applies the input normalisation its weights need, and returns logits ``(N, 1, H, W)`` for the
``binary`` head, ``(N, 2, H, W)`` for ``two_class``, ``(N, 3, H, W)`` for ``boundary``
(background / interior / boundary, for instance segmentation) or ``(N, 2, H, W)`` for
``distance`` (foreground and normalised distance to the cell border, for instance
segmentation). Every model has a ``tiny=True`` option,
a narrow variant of the same architecture for fast tests.

Example:
    >>> from celltune.models import create_model, list_models
    >>> list_models()
    ['pspnet', 'swin_unet', 'unet', 'unet_plain', 'unet_plain_bn', 'unetplusplus']
    >>> model = create_model("swin_unet", in_channels=3, head="two_class", tiny=True)
    >>> model.out_channels, model.size_divisor
    (2, 32)
"""

from __future__ import annotations

# Importing the model modules registers their factories.
from celltune.models import plain_unet, smp_models, swin_unet  # noqa: F401
from celltune.models.base import (
    HEAD_TARGETS,
    HEADS,
    INSTANCE_HEADS,
    MODELS,
    SIZE_DIVISOR,
    Built,
    Segmenter,
)
from celltune.models.zoo import (
    FLOP_CONVENTION,
    count_flops,
    count_params,
    create_model,
    list_models,
    model_info,
    models_table,
)

__all__ = [
    "FLOP_CONVENTION",
    "HEADS",
    "HEAD_TARGETS",
    "INSTANCE_HEADS",
    "MODELS",
    "SIZE_DIVISOR",
    "Built",
    "Segmenter",
    "count_flops",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
    "models_table",
]
