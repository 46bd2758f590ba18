"""Seconds per training step of U-Net sizes: what decides how many steps a CPU budget holds.

One step is what training does per batch: forward, BCE loss, backward and an Adam update, on
``--batch-size`` random crops of ``--crop``² (fp32, channels-last weights and inputs, as
celltune trains on a CPU). Each network is built by celltune (``build_network``), warmed up
for one step, then timed ``--steps`` times; the median is printed. The networks are timed in
turn, round after round, so a machine that slows down slows them all alike.

Example (one torch thread, as each recipe trial trains)::

    OMP_NUM_THREADS=1 python benchmarks/step_cost.py
    python benchmarks/step_cost.py --network resnet34:256,128,64,32,16 --network resnet18:128,64,32,16,8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians

from celltune.config import ModelConfig
from celltune.models.build import build_network

#: encoder:decoder widths; SMP's default U-Net first, then the light network training derives.
DEFAULT_NETWORKS = (
    "resnet34:256,128,64,32,16",
    "resnet18:256,128,64,32,16",
    "resnet34:128,64,32,16,8",
    "resnet18:128,64,32,16,8",
    "resnet18:64,32,16,16,8",
)


def network(spec: str, channels: int) -> torch.nn.Module:
    encoder, _, widths = spec.partition(":")
    options = {"decoder_channels": [int(w) for w in widths.split(",")]} if widths else {}
    cfg = ModelConfig(name="unet", encoder=encoder, weights="none", options=options)
    return build_network(cfg, channels).to(memory_format=torch.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", action="append", default=None,
                        help="ENCODER:W1,W2,W3,W4,W5 (repeatable); default: five sizes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per network")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    specs = args.network or list(DEFAULT_NETWORKS)
    x = torch.randn(args.batch_size, args.channels, args.crop, args.crop)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(args.batch_size, 1, args.crop, args.crop) > 0.5).float()
    nets = {s: network(s, args.channels) for s in specs}
    optims = {s: torch.optim.Adam(n.parameters(), lr=1e-3) for s, n in nets.items()}

    def step(spec: str) -> None:
        logits = nets[spec](x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        optims[spec].zero_grad()
        loss.backward()
        optims[spec].step()

    medians = interleaved_medians({s: (lambda s=s: step(s)) for s in specs}, args.steps)
    base = medians[specs[0]]
    print(f"{args.batch_size} x {args.crop}² crops, {args.threads} thread(s), "
          f"median of {args.steps} steps")
    print("| network (encoder: decoder widths) | parameters | s / step | steps per budget vs first |")
    print("|---|---|---|---|")
    for spec in specs:
        seconds = medians[spec]
        params = sum(p.numel() for p in nets[spec].parameters()) / 1e6
        print(f"| {spec} | {params:.1f}M | {seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
