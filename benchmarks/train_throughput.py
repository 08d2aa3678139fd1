"""Stage-1 training throughput (images/s) on a prepared dataset, at 1 and 2 torch threads.

Usage: python benchmarks/train_throughput.py DATA_DIR [DATA_DIR ...] [--steps 40]
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch

from pixelnn.config import TrainConfig
from pixelnn.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{'dataset':40s} {'threads':>7s} {'images/s':>9s}")
    for data in args.data:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, val_every=10**9,
                                  sample_every=10**9, num_threads=threads)
                result = train(data, tmp, cfg, progress=False, final_eval_limit=16)
            print(f"{data:40s} {threads:7d} {result.images_per_second:9.1f}")


if __name__ == "__main__":
    main()
