"""Sample data for napari: a synthetic microscopy image and its exact instance labels."""

from __future__ import annotations

from celltune.data.synthetic import generate_image
from celltune.integrations.napari.layers import LayerData, image_layer

SIZE = 256
SEED = 7


def synthetic_sample(modality: str, seed: int = SEED, size: int = SIZE) -> list[LayerData]:
    """The image (uint16) and its labels (int16) from celltune's synthetic generator."""
    image, labels = generate_image(seed, size, modality)
    name = f"synthetic {modality.replace('_', ' ')}"
    return [image_layer(name, image), (labels, {"name": f"{name} labels"}, "labels")]


def fluorescence() -> list[LayerData]:
    """Fluorescence: bright cells on a dark field."""
    return synthetic_sample("fluorescence")


def phase_contrast() -> list[LayerData]:
    """Phase contrast: dark cells with bright halos."""
    return synthetic_sample("phase_contrast")
