"""What a user waits for through ``pixelnn synthesize``: start-up, and seconds per input with its files written.

Runs the CLI as a user does (a fresh process each time, results written) on 1 input and on ``--inputs`` N
inputs, ``--repeats`` times, interleaved (1, N, 1, N, ...), each into a new output folder, and prints the
medians:

- ``per input at the margin`` = (t_N - t_1) / (N - 1): what one more input costs, files included;
- ``start-up`` = t_1 - margin: the process start, imports, loading the model and library, and the first
  call's warm-up (weights, kernels), up to where a second input would begin;
- the wall time of a bare ``import torch`` in a fresh process, the floor under every start-up.

With ``--compare-src PATH`` the same runs are made with the code at PATH (``PYTHONPATH=PATH``), interleaved.
Extra ``synthesize`` flags go after ``--``. Usage::

    python benchmarks/cli_synthesize.py --model runs/model-shoes-sr --data runs/shoes-sr --inputs 11 \\
        [--repeats 3] [--compare-src /tmp/old/src] [-- --batch-size 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="dataset whose val inputs are written as the input files")
    ap.add_argument("--inputs", type=int, default=11)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare-src", default=None, metavar="PATH")
    args = ap.parse_args(argv)
    from PIL import Image

    from pixelnn.data.dataset import Dataset

    work = Path(tempfile.mkdtemp(prefix="pixelnn-cli-bench-"))
    try:
        xs = Dataset(args.data).split("val").inputs
        one, many = work / "one", work / "many"
        one.mkdir()
        many.mkdir()
        for i in range(args.inputs):
            im = Image.fromarray(np.asarray(xs[i]).squeeze())
            im.save(many / f"x{i:03d}.png")
            if i == 0:
                im.save(one / "x000.png")
        exe = [sys.executable, "-m", "pixelnn.cli"]
        versions = {"new": None} | ({"old": args.compare_src} if args.compare_src else {})
        times: dict[str, dict[str, list[float]]] = {v: {"1": [], "N": [], "torch": []} for v in versions}
        run = 0
        for _ in range(args.repeats):
            for name, src in versions.items():
                env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
                for key, folder in (("1", one), ("N", many)):
                    run += 1
                    out = work / f"out{run}"
                    times[name][key].append(timed(exe + ["-q", "synthesize", "--model", args.model, str(folder),
                                                         "--out", str(out), *extra], env))
                    shutil.rmtree(out, ignore_errors=True)
                times[name]["torch"].append(timed([sys.executable, "-c", "import torch"], env))
        med = statistics.median
        print(f"pixelnn synthesize, {args.repeats} interleaved repeats (medians); 1 input vs {args.inputs} inputs; "
              f"load average {os.getloadavg()[0]:.2f}" + (f"; flags {' '.join(extra)}" if extra else ""))
        print(f"{'code':5s} {'1 input (s)':>12s} {f'{args.inputs} inputs (s)':>14s} {'per input at the margin (s)':>28s} "
              f"{'start-up (s)':>13s} {'import torch (s)':>17s}")
        for name in versions:
            t = times[name]
            margin = [(n - o) / (args.inputs - 1) for o, n in zip(t["1"], t["N"])]
            start = [o - m for o, m in zip(t["1"], margin)]
            print(f"{name:5s} {med(t['1']):12.2f} {med(t['N']):14.2f} {med(margin):28.2f} {med(start):13.2f} "
                  f"{med(t['torch']):17.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
