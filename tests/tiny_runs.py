"""A tiny run folder in the layout training leaves, without training (shared by tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from celltune.config import RunConfig, save_run_config
from celltune.models.build import build_network


def make_run(
    root: Path,
    *,
    name: str = "unet_plain",
    head: str = "binary",
    threshold: float = 0.5,
    seed: int = 0,
    mean: float | None = None,
    std: float | None = None,
) -> Path:
    """``root/run`` with config.yaml, a Lightning-layout best.ckpt and threshold.json.

    ``mean``/``std`` set the network's input normalisation, as ImageNet weights would.
    """
    cfg = RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"name": name, "head": head, "options": {"tiny": True}},
            "eval": {"tile": 64, "overlap": 0.25, "batch_size": 2},
        }
    )
    torch.manual_seed(seed)
    net = build_network(cfg.model, 1)
    if mean is not None:
        net.mean.fill_(mean)
    if std is not None:
        net.std.fill_(std)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "hyper_parameters": {
                "model": cfg.model.model_dump(mode="json"),
                "train": cfg.train.model_dump(mode="json"),
                "in_channels": 1,
            },
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        },
        run / "checkpoints" / "best.ckpt",
    )
    save_run_config(cfg, run / "config.yaml")
    (run / "threshold.json").write_text(json.dumps({"best_threshold": threshold}))
    return run
