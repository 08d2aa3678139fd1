"""Stage-1 training speed levers (issue 16 part 5): images per CPU-second, one thread.

Usage: python benchmarks/train_levers.py DATA_DIR [--rounds 3] [--images 512] [--warmup 3] [--json OUT.json]

Each configuration (the baseline: today's defaults, batch 32; then channels-last, bf16 autocast,
torch.compile, batch 16 / 64, and channels-last + bf16) trains through :func:`pixelnn.training.train` itself,
so the measured step is the real one: ``--warmup`` steps first (they hold torch.compile's compilation, whose
CPU time is reported apart), then about ``--images`` images' worth of steps, timed with ``time.process_time``
at one torch thread. The configurations run interleaved (A/B/C/.../A/B/C/...) for ``--rounds`` rounds, so a
change in the machine's load hits all of them alike; the table gives the median over rounds and the ratio to
the baseline's median. The dataset is read once, and the per-run validation is skipped (neither is timed).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import pixelnn.train_loop as train_loop
import pixelnn.training as training
from pixelnn.config import TrainConfig

#: (name, TrainConfig overrides) of every configuration, the baseline first.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("baseline (batch 32)", {}),
    ("channels-last", {"channels_last": True}),
    ("bf16 autocast", {"autocast": "bf16"}),
    ("torch.compile", {"compile": True}),
    ("batch 16", {"batch_size": 16}),
    ("batch 64", {"batch_size": 64}),
    ("channels-last + bf16", {"channels_last": True, "autocast": "bf16"}),
]


def measure(data: str, overrides: dict[str, Any], images: int, warmup: int) -> dict[str, float]:
    """One training run: CPU seconds of the warm-up steps and images per CPU-second after them."""
    cfg = TrainConfig(max_steps=10**9, val_every=10**9, sample_every=0, num_threads=1, **overrides)
    steps = max(4, round(images / cfg.batch_size))
    marks: dict[int, float] = {}

    def should_stop(step: int) -> bool:  # called before every step: CPU time at the marks
        if step in (0, warmup, warmup + steps):
            marks[step] = time.process_time()
        return step >= warmup + steps

    with tempfile.TemporaryDirectory() as tmp:
        result = training.train(data, tmp, cfg, progress=False, final_eval_limit=8, should_stop=should_stop)
    seconds = marks[warmup + steps] - marks[warmup]
    return {"images_per_cpu_s": steps * cfg.batch_size / seconds, "step_cpu_s": seconds / steps,
            "warmup_cpu_s": marks[warmup] - marks[0], "steps": steps, "batch_size": cfg.batch_size,
            "compiled": bool(result.metrics.get("compiled", False))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=512, help="images per timed run (steps = images / batch)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    ap.add_argument("--only", default=None, help="comma list of configuration numbers (0 = baseline) to run")
    ap.add_argument("--json", default=None, help="also write the per-run figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    # Read the dataset once; skip the per-run validation on 512 images (not part of a step).
    splits = train_loop.load_training_splits(args.data)
    train_loop.load_training_splits = lambda data_dir: splits
    training._val_loss = lambda *a, **k: 0.0

    configs = CONFIGS if args.only is None else [CONFIGS[int(i)] for i in args.only.split(",")]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    t0 = time.process_time()
    for r in range(args.rounds):
        for name, overrides in configs:
            m = measure(args.data, overrides, args.images, args.warmup)
            runs[name].append(m)
            print(f"round {r + 1} {name:24s} {m['images_per_cpu_s']:7.2f} img/CPU-s "
                  f"({m['steps']} steps, warm-up {m['warmup_cpu_s']:.1f} CPU-s)", file=sys.stderr, flush=True)
    base = statistics.median(m["images_per_cpu_s"] for m in runs[configs[0][0]])
    print(f"\n| configuration | batch | img/CPU-s (median of {args.rounds}) | runs | ratio | step CPU-s | "
          f"warm-up CPU-s ({args.warmup} steps) |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in configs:
        ms = runs[name]
        med = statistics.median(m["images_per_cpu_s"] for m in ms)
        each = ", ".join(f"{m['images_per_cpu_s']:.1f}" for m in ms)
        print(f"| {name}{'' if all(m['compiled'] for m in ms) or 'compile' not in name else ' (NOT compiled)'} | "
              f"{ms[0]['batch_size']} | {med:.2f} | {each} | {med / base:.3f} | "
              f"{statistics.median(m['step_cpu_s'] for m in ms):.3f} | "
              f"{statistics.median(m['warmup_cpu_s'] for m in ms):.1f} |")
    print(f"\ntotal {time.process_time() - t0:.0f} CPU-s, torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, 1 thread")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "images": args.images, "warmup": args.warmup,
                                               "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
