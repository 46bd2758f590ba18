"""celltune: fine-tune, compare and deploy cell segmentation models.

Heavy libraries (torch, lightning, segmentation_models_pytorch) are imported lazily by the
modules that need them, so ``import celltune`` and ``celltune --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
