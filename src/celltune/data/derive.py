"""Training settings derived from a dataset fingerprint, each with a one-line reason.

Every rule is a pure function of a :class:`~celltune.data.fingerprint.Fingerprint` (and the
user's value, which always wins). :func:`derive_config` fills the data settings a run config
left unset and records why in its ``derived`` section, which is saved in the run's config.

Two kinds of rule. :data:`DERIVED_FIELDS` (the filter, the validation count, the rescaling of
large objects) are applied by training. :data:`PROPOSED_FIELDS` (input channels, crop side,
foreground sampling) would change the recipe too; by the benchmark protocol (BENCHMARKS.md)
a recipe default changes only on development-set evidence, and their trials did not give it,
so ``celltune data summary`` shows what they would choose and training leaves them at their
defaults. (The training length, ``train.epochs``, is derived from the training-image count
by :func:`derive_training`; the network's width, for from-scratch CPU training within a time
budget, by :func:`derive_network`.)

"Unset" means not given: not in the YAML file, not on the command line, not in the mapping
the config was validated from (pydantic's ``model_fields_set``). A config read back from a
run folder has every value set, so a resumed run derives nothing again.

Example:
    >>> from celltune.config import RunConfig
    >>> cfg, reasons = derive_config(RunConfig(), fingerprint)     # doctest: +SKIP
    >>> reasons["data.val"]                                        # doctest: +SKIP
    '6 of 40 images (15%, at least 2, at most 20), leaving 34 to train on'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celltune.config import DataConfig, RunConfig
from celltune.data.fingerprint import COLOUR_SHARE, Fingerprint

#: Validation images: this share of the training images, within [VAL_MIN, VAL_MAX].
VAL_SHARE, VAL_MIN, VAL_MAX = 0.15, 2, 20
#: Crop side: the default, its bounds, and how many median object diameters it must span.
CROP_DEFAULT, CROP_MIN, CROP_MAX, CROP_DIAMETERS = 256, 128, 512, 4
#: Objects covering less than this share of the pixels are sparse: crops are aimed at them.
SPARSE_FOREGROUND, FOREGROUND_SAMPLING = 0.1, 0.5
#: Data settings that training derives when unset, in the order they are derived. ``resize``
#: joined after its dev-set trial (BENCHMARKS.md, "Recipe changes").
DERIVED_FIELDS = ("filter", "val", "resize")
#: Recipe settings the rules propose (shown by `celltune data summary`) but training does not
#: apply: their dev-set trials did not show a gain (channels) or showed a loss (crop with
#: foreground sampling); BENCHMARKS.md has the numbers.
PROPOSED_FIELDS = ("channels", "crop", "foreground_sampling")
#: Objects wider than SHRINK_ABOVE px (median) are scaled to DIAMETER_TARGET px on load.
DIAMETER_TARGET, SHRINK_ABOVE = 32, 48
_GIVEN = "given"
#: Training length without a time budget: this many epochs, and at least this many crops.
EPOCHS_DEFAULT, MIN_TRAINING_CROPS = 40, 2000
#: The network of a from-scratch U-Net trained on the CPU within a time budget: a ResNet18
#: encoder and a half-width decoder, 2.1x cheaper per step than ResNet34 with SMP's decoder
#: (benchmarks/step_cost.py), so the budget fits 2.1x the steps; and batches of 4 crops,
#: twice the optimiser steps again (BENCHMARKS.md, "Recipe changes": the 'light' and
#: 'light-batch4' trials).
LIGHT_ENCODER, LIGHT_DECODER, LIGHT_BATCH = "resnet18", [128, 64, 32, 16, 8], 4
LIGHT_MODELS = ("unet",)


@dataclass(frozen=True)
class Choice:
    """A setting's value and why it was chosen."""

    value: Any
    reason: str


def default_val_count(n: int) -> int:
    """Validation images for ``n`` training images: 15%, at least 2, at most 20, below n."""
    return max(1, min(max(round(VAL_SHARE * n), VAL_MIN), VAL_MAX, n - 1))


def validation_count(fp: Fingerprint, user: float | None = None) -> Choice:
    """About 15% of the training images for validation, at least 2, at most 20.

    Never leaves fewer than one image to train on; with a single image the count is 1 and
    the split reports that it cannot be made. A user's count (>= 1) or fraction (< 1) wins.
    """
    if user is not None:
        return Choice(user, _GIVEN)
    n = fp.images
    count = default_val_count(n)
    return Choice(
        count,
        f"{count} of {n} images ({VAL_SHARE:.0%}, at least {VAL_MIN}, at most {VAL_MAX}), "
        f"leaving {max(0, n - count)} to train on",
    )


def data_filter(user: str | None = None) -> Choice:
    """Every paired image; the NeurIPS study's tif-only rule is set by the study config."""
    if user is not None:
        return Choice(user, _GIVEN)
    return Choice("all", "every paired image; the tif-only 'study' filter is the study's rule")


def input_channels(fp: Fingerprint, user: int | None = None) -> Choice:
    """3 (RGB) when colour carries information in the set, else 1 (grayscale)."""
    if user is not None:
        return Choice(user, _GIVEN)
    if fp.sampled == 0:
        return Choice(1, "1 (grayscale): no image could be decoded to look for colour")
    seen = f"{fp.colour_images} of {fp.sampled} decoded images carry colour"
    if fp.colour:
        return Choice(3, f"3 (RGB): {seen}")
    if fp.colour_images:
        return Choice(1, f"1 (grayscale): only {seen} (less than {COLOUR_SHARE:.0%})")
    return Choice(1, "1 (grayscale): no image carries colour (equal channels or one tinted "
                     "signal)")


def _floor32(x: float) -> int:
    return max(32, int(x) // 32 * 32)


def _ceil32(x: float) -> int:
    return max(32, math.ceil(x / 32) * 32)


def crop_size(fp: Fingerprint, user: int | None = None) -> Choice:
    """A multiple of 32: 256, or 4 median object diameters when larger, at most 512, and
    never larger than the median image side (a crop past the image is zero padding)."""
    if user is not None:
        return Choice(user, _GIVEN)
    side, diameter = fp.median_side, fp.object_diameter
    want = CROP_DEFAULT
    if diameter is not None:
        want = max(want, _ceil32(CROP_DIAMETERS * diameter))
    crop = min(want, CROP_MAX)
    if side is not None and _floor32(side) < crop:
        crop = _floor32(side)
        return Choice(crop, f"{crop}: the median image side ({side:g} px) rounded down to 32")
    objects = "no objects found" if diameter is None else \
        f"{CROP_DIAMETERS} median object diameters = {CROP_DIAMETERS * diameter:.0f} px"
    if crop == CROP_MAX and want > CROP_MAX:
        return Choice(crop, f"{crop}: the largest crop ({objects})")
    if crop > CROP_DEFAULT:
        return Choice(crop, f"{crop}: {objects}, rounded up to 32")
    images = "image sizes unknown" if side is None else f"images {side:g} px"
    return Choice(crop, f"{crop}: the default ({objects}; {images})")


def foreground_sampling(fp: Fingerprint, user: float | None = None) -> Choice:
    """Half the crops centred on an object when objects cover under 10% of the pixels."""
    if user is not None:
        return Choice(user, _GIVEN)
    share = fp.foreground_fraction
    if share is None:
        return Choice(0.0, "0: no label statistics")
    if share < SPARSE_FOREGROUND:
        return Choice(FOREGROUND_SAMPLING, f"{FOREGROUND_SAMPLING:g}: objects cover {share:.1%} "
                      f"of the pixels (sparse, < {SPARSE_FOREGROUND:.0%})")
    return Choice(0.0, f"0: objects cover {share:.0%} of the pixels; uniform crops find them")


def rescale(fp: Fingerprint, user: float | None = None) -> Choice:
    """Shrink images whose objects are large so that they are 32 px across (the Cellpose
    idea of a canonical diameter); never enlarge.

    Large objects in large images cost many pixels per object: shrunk, a crop holds whole
    objects with their context and validation and prediction run on fewer pixels. Masks are
    predicted at the shrunk size and scaled back to the image's own.
    """
    if user is not None:
        return Choice(user, _GIVEN)
    d = fp.object_diameter
    if d is None:
        return Choice(None, "none: no objects found")
    if d <= SHRINK_ABOVE:
        return Choice(None, f"none: objects are {d:.0f} px across (at most {SHRINK_ABOVE})")
    factor = round(DIAMETER_TARGET / d, 3)
    return Choice(factor, f"{factor:g}: objects {d:.0f} px across (median) shrink to "
                          f"{DIAMETER_TARGET} px")


RULES: dict[str, Callable[[Fingerprint], Choice]] = {
    "filter": lambda fp: data_filter(),
    "val": validation_count,
    "channels": input_channels,
    "crop": crop_size,
    "foreground_sampling": foreground_sampling,
    "resize": rescale,
}


def training_epochs(n_train: int, samples_per_epoch: int | None, max_time: float | None,
                    user: int | None = None) -> Choice:
    """Epochs: none with a time budget (it decides), else enough for 2000 training crops.

    An epoch draws ``samples_per_epoch`` crops (default: one per training image), so a fixed
    epoch count would give a 20-image set 40 x 20 = 800 crops (100 steps of 8) and a
    500-image set 25 times more. At least 40 epochs, and as many more as a small set needs
    to see 2000 crops.
    """
    if user is not None:
        return Choice(user, _GIVEN)
    if max_time is not None:
        return Choice(None, f"none: trains until the {max_time:g}-minute budget is used, "
                            "the learning rate annealed to its end")
    per_epoch = max(1, samples_per_epoch or n_train)
    epochs = max(EPOCHS_DEFAULT, math.ceil(MIN_TRAINING_CROPS / per_epoch))
    if epochs == EPOCHS_DEFAULT:
        return Choice(epochs, f"{epochs}: {epochs} x {per_epoch} crops per epoch already exceed "
                              f"{MIN_TRAINING_CROPS}")
    return Choice(epochs, f"{epochs}: at least {MIN_TRAINING_CROPS} training crops at "
                          f"{per_epoch} per epoch ({n_train} training images)")


def derive_training(config: RunConfig, n_train: int) -> tuple[RunConfig, dict[str, str]]:
    """``config`` with ``train.epochs`` derived when unset, and the reason recorded.

    ``epochs: null`` without a time budget would train forever; it is derived like unset.
    """
    t = config.train
    if "epochs" in t.model_fields_set and (t.epochs is not None or t.max_time is not None):
        return config, {}
    choice = training_epochs(n_train, config.data.samples_per_epoch, config.train.max_time)
    reasons = {"train.epochs": choice.reason}
    train = config.train.model_copy(update={"epochs": choice.value})  # now marked as set
    return config.model_copy(update={"train": train,
                                     "derived": {**config.derived, **reasons}}), reasons


def training_network(config: RunConfig, gpu: bool) -> dict[str, Choice]:
    """The encoder and decoder widths of a U-Net the user did not size, and its batch size,
    for a time budget.

    Fires only where it was measured to help: a ``unet`` trained from scratch (weights
    ``none``) on the CPU until a time budget is used (``max_time`` without ``epochs``), with
    neither ``encoder`` nor ``decoder_channels`` given. There each step's cost decides how
    far training gets, and the lighter network, in batches of 4 unless ``batch_size`` is
    given, gets further in the same minutes. With ImageNet weights, a GPU or a fixed epoch
    count the network and the batch stay as configured.
    """
    m, t = config.model, config.train
    if (m.name not in LIGHT_MODELS or "encoder" in m.model_fields_set or m.weights != "none"
            or "decoder_channels" in m.options or m.options.get("tiny")):
        return {}
    if gpu or t.max_time is None or t.epochs is not None:
        return {}
    why = (f"trained from scratch on the CPU within a {t.max_time:g}-minute budget: a lighter "
           "network fits 2.1x the steps (--encoder resnet34 keeps SMP's U-Net)")
    choices = {
        "encoder": Choice(LIGHT_ENCODER, f"{LIGHT_ENCODER}: {why}"),
        "decoder_channels": Choice(list(LIGHT_DECODER),
                                   f"{'-'.join(map(str, LIGHT_DECODER))}: half of SMP's "
                                   f"256-128-64-32-16, for the same reason"),
    }
    if "batch_size" not in t.model_fields_set:
        choices["batch_size"] = Choice(
            LIGHT_BATCH, f"{LIGHT_BATCH}: twice the optimiser steps of {t.batch_size} in the "
                         "same budget (--batch-size 8 to keep it)")
    return choices


def derive_network(config: RunConfig, gpu: bool) -> tuple[RunConfig, dict[str, str]]:
    """``config`` with the network and batch sized by :func:`training_network`, and the
    reasons."""
    choices = training_network(config, gpu)
    if not choices:
        return config, {}
    model = config.model.model_copy(update={
        "encoder": choices["encoder"].value,
        "options": {**config.model.options,
                    "decoder_channels": choices["decoder_channels"].value},
    })
    reasons = {"model.encoder": choices["encoder"].reason,
               "model.options.decoder_channels": choices["decoder_channels"].reason}
    train = config.train
    if "batch_size" in choices:
        train = train.model_copy(update={"batch_size": choices["batch_size"].value})
        reasons["train.batch_size"] = choices["batch_size"].reason
    return config.model_copy(update={"model": model, "train": train,
                                     "derived": {**config.derived, **reasons}}), reasons


def unset_fields(data: DataConfig) -> tuple[str, ...]:
    """The derivable data settings that ``data`` was not given."""
    return tuple(f for f in DERIVED_FIELDS if f not in data.model_fields_set)


def derive_all(fp: Fingerprint) -> dict[str, Choice]:
    """Every rule's choice for ``fp``: the applied ones and the proposals."""
    return {name: rule(fp) for name, rule in RULES.items()}


def derive_config(config: RunConfig, fingerprint: Fingerprint) -> tuple[RunConfig, dict[str, str]]:
    """``config`` with its unset data settings derived from ``fingerprint``.

    Returns:
        The new config (its ``derived`` section extended) and the new reasons, keyed by
        dotted config path (``data.val``). A config with every setting given comes back
        unchanged with no reasons.
    """
    choices = {name: RULES[name](fingerprint) for name in unset_fields(config.data)}
    if not choices:
        return config, {}
    given = config.data.model_dump(exclude_unset=True)
    data = DataConfig.model_validate({**given, **{k: c.value for k, c in choices.items()}})
    reasons = {f"data.{k}": c.reason for k, c in choices.items()}
    derived = {**config.derived, **reasons}
    return config.model_copy(update={"data": data, "derived": derived}), reasons
