"""The README model card of a bioimage.io package, written from a run folder's own records.

It states the data (root, split sizes, test image), the model and recipe from the run's
config, the validation Dice at the chosen threshold, the test numbers with their 95%
intervals when the run was evaluated, the threshold and instance step, and how to turn the
package's probability into the run's masks and cell labels. Numbers are copied, not recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celltune import __version__
from celltune.rundir import RunDir

#: Test metrics shown in the card: summary key -> label.
TEST_METRICS = {
    "dice": "Dice",
    "iou": "IoU",
    "f1_iou50": "F1 at IoU 0.5 (cells)",
    "precision_iou50": "precision at IoU 0.5",
    "recall_iou50": "recall at IoU 0.5",
}
RECIPE = ("epochs", "batch_size", "lr", "weight_decay", "schedule", "warmup_epochs", "loss",
          "aug", "precision", "seed")


def model_card(info: dict[str, Any], authors: Sequence[str], cite: Sequence[str]) -> str:
    """Markdown for the package's README (``info`` as built by ``export_bioimageio``)."""
    rundir: RunDir = info["run"]
    config = rundir.read_config()
    sections = [
        _header(config, info),
        _data(rundir, config, info),
        _model(config),
        _results(rundir),
        _postprocessing(info["predictor"]),
        _use(info["predictor"]),
        _credits(info["license"], authors, cite),
    ]
    return "\n\n".join(s.strip() for s in sections) + "\n"


def _header(config: Any, info: dict[str, Any]) -> str:
    predictor = info["predictor"]
    resize = predictor.resize
    note = (
        f"\n\n**Rescale images by {resize} before prediction** (the run trained on rescaled "
        "images; the package cannot express this step)."
        if resize and resize != 1.0 else ""
    )
    return f"""
# celltune {config.model.name}: cell segmentation (run `{info['run'].name}`)

Trained and evaluated with celltune; packaged with celltune {__version__}.
Input: a 2-D image, {predictor.channels} channel(s), float32 raw intensities; any height and
width that are multiples of {predictor.divisor} pixels (pad with mirroring, crop the output
back). The package scales each channel between its 1st and 99.8th percentile and clips to
[0, 1]; the network applies any mean/std it needs itself. Output: the foreground probability
of each pixel, same height and width.{note}
"""


def _data(rundir: RunDir, config: Any, info: dict[str, Any]) -> str:
    counts = rundir.read_splits().counts()
    root = config.data.root if config.data.root is not None else "synthetic cells (celltune)"
    return f"""
## Data

- Root: `{root}` (filter `{config.data.filter}`, {config.data.channels} channel(s))
- Images: {counts['train']} training, {counts['val']} validation, {counts['test']} test
- Test tensors: validation image `{info['image'].name}`, cropped or padded to
  {info['raw'].shape[0]}x{info['raw'].shape[1]}
"""


def _model(config: Any) -> str:
    model, train = config.model, config.train
    options = ", ".join(f"{k}={v}" for k, v in model.options.items()) or "none"
    recipe = "\n".join(f"- {k}: {getattr(train, k)}" for k in RECIPE)
    return f"""
## Model and recipe

- Model: `{model.name}`, encoder `{model.encoder or 'default'}`, initial weights
  `{model.weights}`, head `{model.head}`, options: {options}
- Training crop: {config.data.crop} px
{recipe}
"""


def _results(rundir: RunDir) -> str:
    lines = ["## Results"]
    curve = rundir.read_threshold_curve() or {}
    if "best_dice" in curve:
        lines.append(
            f"- Validation: mean Dice {curve['best_dice']:.4f} at threshold "
            f"{curve['best_threshold']:g} ({curve.get('n_images', '?')} images; the threshold "
            "was chosen there)"
        )
    if rundir.summary_path("test").is_file():
        summary = rundir.read_summary("test")
        lines.append(f"- Test ({summary.get('n_images', '?')} images, 95% bootstrap intervals):")
        lines += [f"  - {label}: {_with_ci(summary, key)}"
                  for key, label in TEST_METRICS.items() if key in summary]
    else:
        lines.append("- Test: not evaluated (run `celltune evaluate RUN --data ROOT`).")
    return "\n".join(lines)


def _with_ci(summary: dict[str, Any], key: str) -> str:
    value = f"{summary[key]:.4f}"
    ci = summary.get(f"{key}_ci95")
    return f"{value} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else value


def _postprocessing(predictor: Any) -> str:
    params = ", ".join(f"{k}={v}" for k, v in predictor.instance_params().items())
    return f"""
## Threshold and post-processing (tuned on validation)

- Mask: `probability >= {predictor.threshold:g}` (head `{predictor.head}`)
- Cells: {params} (chosen by cell F1 on the validation images)
- Both are also in `rdf.yaml` under `config.celltune`.
"""


def _use(predictor: Any) -> str:
    params = predictor.instance_params()
    if "seed_threshold" in params:
        return f"""
## Masks and cell labels from the probability

`mask = probability[0, 0] >= {predictor.threshold:g}`. The {predictor.head} head seeds its
cells from class probabilities that this package does not output; for its labels use the run:
`celltune predict RUN IMAGES --out DIR`.
"""
    call = (
        f"label_instances(mask, method={params['method']!r}, "
        f"min_size={params['min_size']}, h={params.get('h', 2.0)})"
    )
    if params.get("min_fraction"):
        call = f"remove_relative({call}, {params['min_fraction']:g})"
    return f"""
## Masks and cell labels from the probability

```python
from celltune.inference.instances import label_instances, remove_relative
mask = probability[0, 0] >= {predictor.threshold:g}
labels = {call}
```

With the run folder, `celltune predict RUN IMAGES --out DIR` gives the same masks and labels
(tiled, any image size). Known difference: where a channel's two percentiles coincide, celltune
falls back to its min/max and maps a constant channel to 0; bioimage.io does not.
"""


def _credits(license: str, authors: Sequence[str], cite: Sequence[str]) -> str:
    people = ", ".join(authors) or "not given (pass --author NAME)"
    refs = "\n".join(f"- {c.replace('|', ': ', 1)}" for c in cite) or (
        "- none given (pass --cite 'TEXT|DOI')"
    )
    return f"""
## Licence, authors, citation

- Licence: {license}
- Authors: {people}

{refs}
"""
