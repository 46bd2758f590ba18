"""Time a finished run's two validation sweeps (threshold, then instance step), with the
validation probabilities predicted once for both (what ``celltune train`` does) and twice.

    OMP_NUM_THREADS=1 python benchmarks/validation_sweeps.py runs/unet [--repeats 2]

The run's ``threshold.json`` and ``postprocess.json`` are rewritten with the same values.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from celltune.evaluation.evaluate import (
        KeptProbabilities,
        choose_postprocess,
        choose_threshold,
    )
    from celltune.inference.predict import Predictor
    from celltune.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run = RunDir(args.run)
    base = Predictor.from_run(run)
    print(f"{run.path}: {len(run.read_splits().val)} validation images")
    for _ in range(args.repeats):
        for label, kept in (("twice", None), ("once", KeptProbabilities())):
            started = time.perf_counter()
            threshold = choose_threshold(run, predictor=base, progress=False, keep=kept)
            predictor = base.with_options(threshold=threshold.best_threshold)
            result = choose_postprocess(run, predictor=predictor, progress=False, kept=kept)
            print(f"predicted {label}: {time.perf_counter() - started:.1f} s "
                  f"(threshold {threshold.best_threshold:.2f}, step {result.best})", flush=True)


if __name__ == "__main__":
    main()
