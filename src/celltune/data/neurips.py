"""NeurIPS 2022 CellSeg datasets: layout discovery, image/label pairing, filters and splits.

A dataset root may be laid out like the Zenodo archives (``Training-labeled/``, ``Tuning/``,
``Testing/Public/``, each with ``images/`` and ``labels/``), like the older challenge
releases (``Training/``, ``TrainLabeled/``, ``Train_Labeled/``), or be a bare folder holding
``images/`` and ``labels/`` itself. Images pair with labels by stem:
``images/cell_00001.bmp`` <-> ``labels/cell_00001_label.tiff``.

Example:
    >>> found = discover("data/neurips")                      # doctest: +SKIP
    >>> kept, dropped = apply_filter(found.splits["training"], "study")  # doctest: +SKIP
    >>> len(kept), len(dropped)                               # doctest: +SKIP
    (491, 509)
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from celltune.config import DataConfig
from celltune.data.derive import default_val_count
from celltune.data.groups import group_of
from celltune.data.samples import Sample, Splits
from celltune.errors import DataError
from celltune.io import IMAGE_EXTENSIONS, TIFF_EXTENSIONS
from celltune.registry import Registry

# Split roles in a dataset root, and the folder names (normalised: lower case, no '-', '_' or
# spaces) that mean them, in order of preference.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "training": ("traininglabeled", "trainlabeled", "training", "train"),
    "tuning": ("tuning", "tune"),
    "testing": ("testing", "test"),
}
IMAGE_DIR_NAMES = ("images", "image", "imgs")
LABEL_DIR_NAMES = ("labels", "label", "masks")
LABEL_EXTENSIONS = (".tif", ".tiff", ".png")
LABEL_SUFFIX = "_label"
# The Zenodo "Testing" archive nests its labelled images one level deeper.
_NESTED_DIRS = ("public",)
# Unpaired files named one by one in warnings before a count of the rest.
_UNPAIRED_SHOWN = 5


@dataclass
class Discovery:
    """What :func:`discover` found below a dataset root.

    Attributes:
        root: the folder that was searched.
        layout: ``"splits"`` (named split folders below root) or ``"bare"`` (root itself holds
            ``images/`` and ``labels/``).
        splits: paired samples per split role (``training``, ``tuning``, ``testing``), sorted
            by image path.
        folders: the folder each split was read from.
        unpaired_images: images without a label file.
        unpaired_labels: label files without an image.
    """

    root: Path
    layout: str
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_labels: list[Path] = field(default_factory=list)

    def all_samples(self) -> list[Sample]:
        """Every paired sample, split after split."""
        return [s for samples in self.splits.values() for s in samples]


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _child_dirs(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Subfolders whose normalised name is in ``names``, in the preference order of names."""
    try:
        children = [p for p in sorted(folder.iterdir()) if p.is_dir()]
    except OSError:
        return []
    return [p for n in names for p in children if _norm(p.name) == n]


def _child_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    found = _child_dirs(folder, names)
    return found[0] if found else None


def _split_dirs(folder: Path) -> tuple[Path, Path | None] | None:
    """``(images_dir, labels_dir)`` of a split folder, looking one level into ``Public/``."""
    for candidate in (folder, _child_dir(folder, _NESTED_DIRS)):
        if candidate is None:
            continue
        images = _child_dir(candidate, IMAGE_DIR_NAMES)
        if images is not None:
            return images, _child_dir(candidate, LABEL_DIR_NAMES)
    return None


def _role_of(name: str) -> str | None:
    key = _norm(name)
    return next((role for role, names in SPLIT_ALIASES.items() if key in names), None)


def _visible_files(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    if folder is None:
        return []
    # Skip hidden files: macOS "._cell_00001.tif" resource forks look like images but are not.
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def label_key(path: Path) -> tuple[str, bool]:
    """The image stem a label file belongs to, and whether it used the ``_label`` suffix."""
    stem = path.stem
    if stem.lower().endswith(LABEL_SUFFIX):
        return stem[: -len(LABEL_SUFFIX)], True
    return stem, False


def pair_files(
    images: list[Path], labels: list[Path]
) -> tuple[list[Sample], list[Path], list[Path]]:
    """Pair images with labels by stem.

    ``<stem>_label.<ext>`` is preferred over ``<stem>.<ext>``; when two images share a stem
    (``a.png`` and ``a.tif``) only the first by name gets the label, the other is unpaired.

    Returns:
        ``(samples, unpaired_images, unpaired_labels)``.
    """
    by_key: dict[str, Path] = {}
    for path in sorted(labels, key=lambda p: (not label_key(p)[1], p.name)):
        by_key.setdefault(label_key(path)[0], path)
    samples: list[Sample] = []
    unpaired_images: list[Path] = []
    used: set[Path] = set()
    for image in sorted(images):
        label = by_key.get(image.stem)
        if label is None or label in used:
            unpaired_images.append(image)
            continue
        used.add(label)
        samples.append(Sample(image, label))
    unpaired_labels = [p for p in sorted(labels) if p not in used]
    return samples, unpaired_images, unpaired_labels


def _looked_for() -> str:
    below = (
        "Training-labeled/, Tuning/, Testing/Public/, Training/, TrainLabeled/ or Train_Labeled/"
    )
    return f"images/ and labels/ folders in it or below {below}"


def discover(root: str | os.PathLike) -> Discovery:
    """Find the layout of a dataset root and pair its images with their labels.

    Args:
        root: a dataset root in the Zenodo, older or bare layout, or one split folder such
            as ``.../Training-labeled`` (its role is taken from its name; default training).

    Raises:
        DataError: the root does not exist or holds no recognised layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; expected {_looked_for()}.")
    own = _split_dirs(root)
    if own is not None:
        found = Discovery(root, "bare")
        _add_split(found, _role_of(root.name) or "training", root, own)
        return found
    found = Discovery(root, "splits")
    for role, names in SPLIT_ALIASES.items():
        # The first candidate holding images wins: an empty "Training/" next to a full
        # "Training-labeled/" must not hide it.
        for folder in _child_dirs(root, names):
            dirs = _split_dirs(folder)
            if dirs is not None:
                _add_split(found, role, folder, dirs)
                break
    if not found.splits:
        raise DataError(f"{root}: no dataset layout recognised; looked for {_looked_for()}.")
    return found


def _add_split(found: Discovery, role: str, folder: Path, dirs: tuple[Path, Path | None]) -> None:
    images = _visible_files(dirs[0], IMAGE_EXTENSIONS)
    labels = _visible_files(dirs[1], LABEL_EXTENSIONS)
    samples, lonely_images, lonely_labels = pair_files(images, labels)
    found.splits[role] = samples
    found.folders[role] = folder
    found.unpaired_images.extend(lonely_images)
    found.unpaired_labels.extend(lonely_labels)


def warn_unpaired(found: Discovery, roles: tuple[str, ...] = ("training", "tuning")) -> list[Path]:
    """Warn, naming each file, about images without labels and labels without images.

    Such files cannot be trained or evaluated on. A warning (not an error) keeps a forgotten
    label from going unnoticed without refusing a dataset that is otherwise usable; the
    unlabelled ``Testing`` images of the challenge are expected and not reported.

    Returns:
        The unpaired files inside the folders of ``roles``.
    """
    folders = [found.folders[r] for r in roles if r in found.folders]
    problems = [(p, "image has no label file") for p in found.unpaired_images]
    problems += [(p, "label file has no image") for p in found.unpaired_labels]
    problems = [(p, why) for p, why in problems if any(f in p.parents for f in folders)]
    for path, why in problems[:_UNPAIRED_SHOWN]:
        warnings.warn(f"{path}: {why}; it is left out.", UserWarning, stacklevel=2)
    if len(problems) > _UNPAIRED_SHOWN:
        warnings.warn(
            f"{found.root}: {len(problems) - _UNPAIRED_SHOWN} more unpaired files are left out; "
            f"`celltune data summary {found.root}` lists them.",
            UserWarning,
            stacklevel=2,
        )
    return [p for p, _ in problems]


# --- filters -----------------------------------------------------------------------------

#: A filter returns ``None`` to keep a sample, or the reason it is dropped.
SampleFilter = Callable[[Sample], "str | None"]
FILTERS: Registry[SampleFilter] = Registry("filter")


@FILTERS.register("study", description="tif/tiff images only, as in the reproduced study")
def _study_filter(sample: Sample) -> str | None:
    suffix = sample.image.suffix.lower()
    return None if suffix in TIFF_EXTENSIONS else f"{suffix} is not .tif/.tiff"


@FILTERS.register("all", description="every paired image")
def _keep_all(sample: Sample) -> str | None:
    return None


def apply_filter(samples: list[Sample], name: str) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """Split ``samples`` into those the named filter keeps and ``(sample, reason)`` dropped.

    Raises:
        ConfigError: unknown filter name (the message lists the valid ones).
    """
    keep = FILTERS.get(name)
    kept: list[Sample] = []
    dropped: list[tuple[Sample, str]] = []
    for sample in samples:
        reason = keep(sample)
        if reason is None:
            kept.append(sample)
        else:
            dropped.append((sample, reason))
    return kept, dropped


# --- splits ------------------------------------------------------------------------------


def _sorted(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: (s.name, str(s.image)))


def _shuffled(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    ordered = _sorted(samples)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def hold_out(shuffled: list[Sample], count: int) -> tuple[list[Sample], list[Sample]]:
    """``(held out, rest)``: about ``count`` images taken as whole groups of correlated images.

    Groups (:func:`celltune.data.groups.group_of`: frames of one movie, tiles of one slide) are
    visited in the order of their first image in ``shuffled`` and taken whole while they fit
    in ``count``; at least one group stays in the rest. When no group fits (two long movies),
    the held-out images are the last ``count`` frames by name of the largest group: one block
    of consecutive frames, not frames interleaved with training ones. Where every image is its
    own group this is ``shuffled[:count]``, the split of images without groups.
    """
    groups: dict[str, list[Sample]] = {}
    for sample in shuffled:
        groups.setdefault(group_of(sample.name), []).append(sample)
    if len(groups) == len(shuffled):
        return shuffled[:count], shuffled[count:]
    taken: list[Sample] = []
    rest: list[Sample] = []
    left = len(groups)
    for members in groups.values():
        if len(taken) + len(members) <= count and left > 1:
            taken += members
            left -= 1
        else:
            rest += members
    if not taken:
        largest = max(groups.values(), key=lambda m: (len(m), m[0].name))
        size = min(count, len(largest) - 1)
        if size < 1:  # nothing can be held out whole; fall back to single images
            return shuffled[:count], shuffled[count:]
        block = set(_sorted(largest)[-size:])
        taken = [s for s in shuffled if s in block]
        rest = [s for s in shuffled if s not in block]
    return taken, rest


def _count(value: float, total: int) -> int:
    """A count (value >= 1) or a fraction of ``total`` (value < 1, at least one)."""
    if value >= 1:
        return round(value)
    return max(1, round(value * total))


def _training_pool(found: Discovery) -> list[Sample]:
    if "training" in found.splits:
        return found.splits["training"]
    if found.layout == "bare":  # a lone Tuning/ or Testing/ folder used as the whole dataset
        return next(iter(found.splits.values()))
    raise DataError(
        f"{found.root}: no training folder found (looked for Training-labeled/, Training/, "
        "TrainLabeled/ or Train_Labeled/ with images/ and labels/)."
    )


def _nonempty(samples: list[Sample], what: str, root: Path, filter_name: str) -> list[Sample]:
    if not samples:
        hint = "use --filter all to keep every paired image, or " if filter_name != "all" else ""
        raise DataError(
            f"{root}: the {what} split is empty with filter {filter_name!r}; {hint}check that "
            "images have labels."
        )
    return samples


def read_list_file(path: Path, candidates: list[Sample]) -> list[Sample]:
    """Samples named in a text file: one image name or path per line (``#`` starts a comment).

    A line matches an image whose path ends with it (``cell_00001.tif``,
    ``Tuning/images/cell_00001.tif``), or its stem when the line has no extension.

    Raises:
        DataError: the file is missing, a line matches no image, or it matches several.
    """
    if not path.is_file():
        raise DataError(f"{path}: test list file not found; give 'auto' or a text file path.")
    chosen: list[Sample] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        matches = [s for s in candidates if _matches(s.image, entry)]
        if len(matches) != 1:
            problem = "matches no paired image" if not matches else f"matches {len(matches)} images"
            raise DataError(
                f"{path}: line {number} ({entry!r}) {problem}; give a file name or a path "
                "relative to the dataset root."
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def _matches(image: Path, entry: str) -> bool:
    wanted = Path(entry)
    if wanted.is_absolute():
        return image.resolve() == wanted.resolve()
    n = len(wanted.parts)
    return wanted.parts in (image.parts[-n:], image.with_suffix("").parts[-n:])


def _discover(data_cfg: DataConfig) -> Discovery:
    if data_cfg.root is None:
        raise DataError("data.root is not set; give a dataset folder (--data) to split.")
    return discover(data_cfg.root)


def _test_and_pool(
    found: Discovery, data_cfg: DataConfig, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    """The test images and the filtered pool left for training and validation."""
    root, name = found.root, data_cfg.filter
    pool, _ = apply_filter(_training_pool(found), name)
    _nonempty(pool, "training", root, name)
    if data_cfg.test != "auto":
        # An explicit list is used as given: the user chose those images, filter or not.
        test = read_list_file(Path(data_cfg.test), found.all_samples())
        chosen = set(test)
        pool = [s for s in pool if s not in chosen]
    elif "tuning" in found.splits and found.layout == "splits":
        test = apply_filter(found.splits["tuning"], name)[0]
    else:
        shuffled = _shuffled(pool, rng)
        test, pool = hold_out(shuffled, _count(data_cfg.test_fraction, len(shuffled)))
    _nonempty(test, "test", root, name)
    return test, pool


def training_images(data_cfg: DataConfig, seed: int) -> list[Sample]:
    """The images :func:`make_splits` divides into training and validation, sorted by name.

    The same root, filter, test rule and seed give the same images as the splits' train and
    validation lists together; test images are never among them.
    """
    _, pool = _test_and_pool(_discover(data_cfg), data_cfg, np.random.default_rng(seed))
    return _sorted(pool)


def _too_few(root: Path, data_cfg: DataConfig, n_val: int, available: int) -> DataError:
    if available < 2:
        advice = "add labelled images: training and validation need at least one each"
    else:
        advice = f"lower it, e.g. --val {default_val_count(available)}"
    return DataError(
        f"{root}: --val {data_cfg.val:g} asks for {n_val} validation images but only "
        f"{available} training images remain with filter {data_cfg.filter!r}; {advice}."
    )


def make_splits(data_cfg: DataConfig, seed: int) -> Splits:
    """Deterministic train / validation / test lists for ``data_cfg.root``.

    Test is the filtered Tuning folder when present (``test: auto``), else a held-out
    ``test_fraction`` of the training pool, or the images named in a list file. Validation
    (``val``: a count when >= 1, else a fraction) is drawn from what remains. Samples are
    sorted by name, then permuted with ``numpy.random.default_rng(seed)``.

    Raises:
        DataError: no root, no recognised layout, or an empty split after filtering.
    """
    found = _discover(data_cfg)
    warn_unpaired(found)
    rng = np.random.default_rng(seed)
    test, pool = _test_and_pool(found, data_cfg, rng)
    shuffled = _shuffled(pool, rng)
    n_val = _count(data_cfg.val, len(shuffled))
    if n_val >= len(shuffled):
        raise _too_few(found.root, data_cfg, n_val, len(shuffled))
    val, train = hold_out(shuffled, n_val)
    return Splits(train=_sorted(train), val=_sorted(val), test=_sorted(test))
