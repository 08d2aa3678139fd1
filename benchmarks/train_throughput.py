"""Stage-1 training throughput (images/s) on a prepared dataset, at 1 and 2 torch threads.

Each row trains ``--steps`` steps through ``train()`` itself. ``--autocasts off,auto`` adds a row per stage-1
precision (``TrainConfig.autocast``; ``off`` is the float32 training of before the levers, bit-identical to
it), interleaved over ``--rounds``; the median of the rounds is printed.

Usage: python benchmarks/train_throughput.py DATA_DIR [DATA_DIR ...] [--steps 40] [--autocasts off,auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from pixelnn.config import TrainConfig
from pixelnn.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--autocasts", default="auto", help="comma list of auto, off, bf16 (default: auto only)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    autocasts = args.autocasts.split(",")
    print(f"{'dataset':40s} {'threads':>7s} {'autocast':>8s} {'ran':>5s} {'images/s':>9s}")
    for data in args.data:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rates: dict[str, list[float]] = {a: [] for a in autocasts}
            ran: dict[str, str] = {}
            for _ in range(args.rounds):
                for a in autocasts:
                    with tempfile.TemporaryDirectory() as tmp:
                        cfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, val_every=10**9,
                                          sample_every=10**9, num_threads=threads, autocast=a)
                        result = train(data, tmp, cfg, progress=False, final_eval_limit=16)
                        ran[a] = json.loads((Path(tmp) / "config.json").read_text())["autocast"]
                    rates[a].append(result.images_per_second)
            for a in autocasts:
                print(f"{data:40s} {threads:7d} {a:>8s} {ran[a]:>5s} {float(np.median(rates[a])):9.1f}")


if __name__ == "__main__":
    main()
