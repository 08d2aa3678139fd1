"""Batch synthesis throughput of the engines: ``--engine local`` against ``--engine ray`` with 1 and 2 workers.

The ``--n`` evenly spaced inputs of a prepared dataset's split are written as PNG files into a temporary
folder and synthesized with :func:`pixelnn.synthesize.synthesize_files` (what ``pixelnn synthesize`` runs),
each configuration into its own results folder. Every ray run starts its own local Ray cluster with
``workers x 1`` CPUs (``ray.init(num_cpus=...)``); its wall time includes that start, the actors' start and
their loading of the model and library, which the ``work s`` column leaves out of the cluster start only.
Every worker (and the local run, unless ``--local-threads`` says otherwise) uses 1 torch thread.

Before the timed runs one untimed local run fills the pixel cache for these inputs' neighbours, so every
run reads it warm. After them, every ray result is compared with the local one file by file (bytes; the
manifests without their timings).

Usage::

    python benchmarks/batch_engine.py --model runs/model-shoes-sr --data runs/shoes-sr [--n 16] \
        [--workers 1,2] [--local-threads 1] [--batch-size 8] [--num-outputs 72]

The model folder is copied into the temporary folder (the pixel cache is written to the library).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pixelnn.data.dataset import Dataset
from pixelnn.options import SynthesisOptions
from pixelnn.synthesize import synthesize_files


def write_inputs(data_dir: Path, split: str, n: int, folder: Path) -> int:
    inputs = Dataset(data_dir).split(split).inputs
    idx = np.linspace(0, len(inputs) - 1, min(n, len(inputs))).round().astype(int)
    folder.mkdir(parents=True)
    for j, i in enumerate(idx):
        Image.fromarray(np.asarray(inputs[i])).save(folder / f"{split}{j:03d}_{i:05d}.png")
    return len(idx)


def same_results(a: Path, b: Path) -> bool:
    fa = {str(p.relative_to(a)): p for p in a.rglob("*") if p.is_file()}
    fb = {str(p.relative_to(b)): p for p in b.rglob("*") if p.is_file()}
    if sorted(fa) != sorted(fb):
        return False
    for name, p in fa.items():
        if p.name == "manifest.json":
            ma, mb = json.loads(p.read_text()), json.loads(fb[name].read_text())
            ma.pop("timings"), mb.pop("timings")
            if ma != mb:
                return False
        elif p.read_bytes() != fb[name].read_bytes():
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="ray worker counts")
    ap.add_argument("--local-threads", default="1", help="torch threads of the local runs (comma list)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-outputs", type=int, default=None, help="outputs per input (default: all, 72)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="pixelnn-engine-bench-"))
    try:
        model = tmp / "model"
        shutil.copytree(args.model, model)
        n = write_inputs(Path(args.data), args.split, args.n, tmp / "inputs")
        options = SynthesisOptions(num_outputs=args.num_outputs) if args.num_outputs else SynthesisOptions()
        common = dict(options=options, batch_size=args.batch_size, progress=False)
        print(f"{args.model}: {n} {args.split} inputs, batch size {args.batch_size}, "
              f"{args.num_outputs or 'all'} outputs each; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}")
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        synthesize_files([tmp / "inputs"], model, tmp / "warmup", **common)
        print(f"warm-up (fills the pixel cache): {time.perf_counter() - t0:.1f} s")
        rows = []
        for threads in [int(t) for t in args.local_threads.split(",")]:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            r = synthesize_files([tmp / "inputs"], model, tmp / f"local{threads}", **common)
            rows.append((f"local ({threads} thread{'s' * (threads > 1)})", time.perf_counter() - t0, r.seconds,
                         len(r.done), tmp / f"local{threads}"))
        torch.set_num_threads(1)
        for w in [int(x) for x in args.workers.split(",")]:
            t0 = time.perf_counter()
            r = synthesize_files([tmp / "inputs"], model, tmp / f"ray{w}", engine="ray", num_workers=w,
                                 cpus_per_worker=1.0, **common)
            rows.append((f"ray, {w} worker{'s' * (w > 1)}", time.perf_counter() - t0, r.seconds, len(r.done),
                         tmp / f"ray{w}"))
        base = rows[0][4]
        ray_rates = {name: done / wall for name, wall, _, done, _ in rows if name.startswith("ray")}
        print(f"\n{'engine':>22} {'inputs':>6} {'wall s':>8} {'work s':>8} {'inputs/s':>9} {'vs local':>9} "
              f"{'same files':>10}")
        local_rate = rows[0][3] / rows[0][1]
        for name, wall, work, done, out in rows:
            same = "-" if out == base else ("yes" if same_results(base, out) else "NO")
            print(f"{name:>22} {done:>6} {wall:>8.1f} {work:>8.1f} {done / wall:>9.3f} "
                  f"{done / wall / local_rate:>9.2f} {same:>10}")
        names = sorted(ray_rates)
        if len(names) >= 2:
            print(f"\nscaling: {names[-1]} / {names[0]} = {ray_rates[names[-1]] / ray_rates[names[0]]:.2f}x "
                  f"(inputs/s over wall time, cluster start included)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
