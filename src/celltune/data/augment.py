"""Augmentation presets for image/mask pairs, built on albumentations 2.

Presets live in the registry :data:`AUGMENTATIONS`:

* ``none``: no augmentation (:func:`build_augmentation` returns ``None``);
* ``aug1``: horizontal and vertical flips and random 90° rotations (the dihedral group, so
  every one of the 8 orientations is equally likely);
* ``aug2``: ``aug1`` plus affine scale/rotate/shift, elastic deformation,
  brightness/contrast/gamma, Gaussian blur and Gaussian noise, with moderate probabilities.

Geometric transforms move image and mask together; the mask always uses nearest-neighbour
interpolation, so a binary mask stays binary and instance ids stay ids. Images are float32 in
``[0, 1]`` and are clipped back into that range after the intensity transforms. Borders
exposed by affine and elastic warps are filled by mirroring (image and mask alike), which
keeps the pair consistent.

:meth:`Augmentation.with_plane` also carries a float plane that belongs to the mask (the
``distance`` head's distance map): the geometric transforms move it with the mask but
interpolate it bilinearly, like the image, and the intensity transforms never touch it.

Every call takes an integer ``seed``; the same seed gives the same result in any process, which
lets a training epoch be replayed exactly after a resume.

Example:
    >>> import numpy as np
    >>> augment = build_augmentation("aug1")
    >>> image, mask = np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.int32)
    >>> out_image, out_mask = augment(image, mask, seed=3)
    >>> out_image.shape, out_mask.shape
    ((8, 8, 1), (8, 8))
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np

from celltune.registry import Registry

AUGMENTATIONS: Registry[Callable[[], list[A.BasicTransform]]] = Registry("augmentation preset")

_MIRROR = cv2.BORDER_REFLECT_101


@AUGMENTATIONS.register("none", description="no augmentation")
def _none() -> list[A.BasicTransform]:
    return []


class UnevenIllumination(A.ImageOnlyTransform):
    """Add a smooth Gaussian glow or shadow: out-of-focus light, uneven widefield background.

    Real images from other microscopes often have a background that is not flat; a model
    trained only on flat backgrounds mistakes the glow for cells.

    Args:
        amplitude: range of the peak change, in units of the [0, 1] intensity scale.
        sigma: range of the glow's width, as a fraction of the image side.
        p: probability of applying the transform.
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.03, 0.2),
        sigma: tuple[float, float] = (0.2, 0.8),
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        self.amplitude = amplitude
        self.sigma = sigma

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        rng = self.random_generator
        sign = 1.0 if rng.random() < 0.5 else -1.0
        return {
            "centre": (rng.uniform(0, h), rng.uniform(0, w)),
            "width": rng.uniform(*self.sigma) * max(h, w),
            "peak": sign * rng.uniform(*self.amplitude),
        }

    def apply(self, img: np.ndarray, centre=(0.0, 0.0), width=1.0, peak=0.0, **_: object):
        h, w = img.shape[:2]
        yy = (np.arange(h, dtype=np.float32) - centre[0])[:, None]
        xx = (np.arange(w, dtype=np.float32) - centre[1])[None, :]
        field = peak * np.exp(-(yy**2 + xx**2) / (2.0 * width**2))
        return img + (field[..., None] if img.ndim == 3 else field).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("amplitude", "sigma")


@AUGMENTATIONS.register("aug1", description="flips and 90° rotations")
def _aug1() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]


@AUGMENTATIONS.register(
    "aug2",
    description="aug1 + affine, elastic, brightness/contrast/gamma, uneven illumination, "
    "blur, noise",
)
def _aug2() -> list[A.BasicTransform]:
    geometric = [
        A.Affine(
            scale=(0.8, 1.25),
            rotate=(-30, 30),
            translate_percent=(-0.05, 0.05),
            border_mode=_MIRROR,
            p=0.5,
        ),
        # alpha/sigma chosen by measurement: ~2.5 px mean, ~7 px max displacement, smooth at
        # the scale of a cell, so shapes wobble without tearing thin structures.
        A.ElasticTransform(alpha=400, sigma=12, border_mode=_MIRROR, p=0.25),
    ]
    intensity = [
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 125), p=0.3),
        UnevenIllumination(p=0.3),
        A.GaussianBlur(sigma_limit=(0.3, 1.2), p=0.2),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]
    return _aug1() + geometric + intensity


class Augmentation:
    """A seeded image/mask transform: ``augment(image, mask, seed) -> (image, mask)``.

    Args:
        name: preset name (see :data:`AUGMENTATIONS`).
        transforms: the albumentations transforms, applied in order.
    """

    def __init__(self, name: str, transforms: Sequence[A.BasicTransform]) -> None:
        self.name = name
        self._compose = A.Compose(list(transforms), mask_interpolation=cv2.INTER_NEAREST)
        # For with_plane: the same transforms (copies: a Compose registers its targets on
        # them), split into the geometric ones, which warp the plane as an image (bilinear),
        # and the intensity ones, which see the image alone.
        own = copy.deepcopy(list(transforms))
        self._geometric = A.Compose(
            [t for t in own if not isinstance(t, A.ImageOnlyTransform)],
            mask_interpolation=cv2.INTER_NEAREST, additional_targets={"plane": "image"},
        )
        self._intensity = A.Compose([t for t in own if isinstance(t, A.ImageOnlyTransform)])

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Transform ``image`` (H, W, C float32) and ``mask`` (H, W integer) identically.

        Args:
            image: float32 ``(H, W, C)`` in ``[0, 1]``.
            mask: integer ``(H, W)``: binary mask or instance ids.
            seed: makes the result reproducible; ``None`` continues the current random stream.
        """
        if seed is not None:
            # One shared stream for all transforms: Compose.set_random_seed would give every
            # transform an identically seeded generator, so e.g. both flips would always fire
            # together.
            self._compose.set_random_state(np.random.default_rng(seed), random.Random(int(seed)))
        out = self._compose(image=image, mask=mask)
        out_image = np.clip(out["image"], 0.0, 1.0).astype(np.float32, copy=False)
        return out_image, out["mask"].astype(mask.dtype, copy=False)

    def with_plane(
        self, image: np.ndarray, mask: np.ndarray, plane: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like calling the augmentation, plus a float32 ``(H, W)`` plane that moves with the
        mask: same flips, rotations and warps, but bilinear, and no intensity change.

        Reproducible from ``seed`` like a plain call, though a plain call with the same seed
        may draw differently (the two use separate compositions).
        """
        if seed is not None:
            rng, py_rng = np.random.default_rng(seed), random.Random(int(seed))
            self._geometric.set_random_state(rng, py_rng)
            self._intensity.set_random_state(rng, py_rng)
        moved = self._geometric(image=image, mask=mask, plane=plane)
        out_image = self._intensity(image=moved["image"])["image"]
        out_image = np.clip(out_image, 0.0, 1.0).astype(np.float32, copy=False)
        out_plane = moved["plane"].astype(np.float32, copy=False)
        return out_image, moved["mask"].astype(mask.dtype, copy=False), out_plane

    def __repr__(self) -> str:
        return f"Augmentation({self.name!r})"


def build_augmentation(name: str) -> Augmentation | None:
    """Return the preset ``name`` as a seeded callable, or ``None`` for ``none``.

    Raises:
        ConfigError: unknown preset; the message lists the valid names.
    """
    transforms = AUGMENTATIONS.get(name)()
    if not transforms:
        return None
    return Augmentation(name.lower(), transforms)


def augmented_views(
    image: np.ndarray, mask: np.ndarray, preset: str, n: int = 8, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` augmented versions of one pair, for a preview.

    :func:`celltune.viz.datasets.augmentation_preview` draws them.

    Args:
        image: float32 ``(H, W, C)`` in ``[0, 1]`` with C = 1 or 3.
        mask: integer ``(H, W)``: binary mask or instance map.
        preset: augmentation preset name (``none`` repeats the pair unchanged).
        n: number of views.
        seed: the views use seeds derived from this, so they are reproducible.

    Raises:
        ConfigError: unknown preset; the message lists the valid names.
    """
    augment = build_augmentation(preset)
    if augment is None:
        return [(image, mask) for _ in range(n)]
    seeds = np.random.SeedSequence(seed).generate_state(n)
    return [augment(image, mask, int(s)) for s in seeds]
