"""Are two versions of the code bit-identical on real data? Digests of every mode's outputs and correspondences.

Runs the pipeline of this checkout and of another source tree (``--other-src``, e.g. a ``git worktree``
of an older commit) in subprocesses on the same model, inputs, modes and colours, and prints for
each case whether the 72 outputs and the correspondences (library position, source y and x) are
identical, and the similarity arrays.

Usage::

    git worktree add /tmp/old d8f1a33ca9    # e.g. the commit before issue 11
    python benchmarks/same_outputs.py --model runs/model-shoes-sr --data runs/shoes-sr --other-src /tmp/old/src --n 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

MODES = ("matched", "coherent", "global", "authors")
COLORS = ("rgb", "luma")
ARRAYS = ("outputs", "exemplar", "source_y", "source_x", "similarity")


def _digest(a) -> str:
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()[:24]


def worker(model: str, data: str, n: int, threads: int) -> None:
    """Print one JSON line per (input, mode, colour): digests of the result's arrays (either API)."""
    import numpy as np
    import torch

    from pixelnn.data.dataset import Dataset
    from pixelnn.pipeline import PixelNNPipeline

    torch.set_num_threads(threads)
    pipe = PixelNNPipeline.from_model_dir(model, pixel_cache=False)
    from pixelnn import options as options_module

    # the grid order (issue 16) where the code has one: the order of the code before ranking
    grid = {"order": "grid"} if hasattr(options_module, "ORDERS") else {}
    # float32 descriptors (issue 17) where the code has the choice: the precision of the code before it
    if "autocast" in {f.name for f in __import__("dataclasses").fields(options_module.SynthesisOptions)}:
        grid["autocast"] = "off"
    split = Dataset(data).split("val")
    pick = np.unique(np.linspace(0, len(split) - 1, n).astype(int))
    for i in pick:
        x = np.asarray(split.inputs[i])
        for mode in MODES:
            for color in COLORS:
                r = pipe(x, mode=mode, color=color, **grid)
                print(json.dumps({"input": int(i), "mode": mode, "color": color,
                                  **{k: _digest(getattr(r, k)) for k in ARRAYS}}), flush=True)


def run(src: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--data", args.data, "--n", str(args.n),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {(r["input"], r["mode"], r["color"]): r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--other-src", default=None, help="the src/ folder of the other version (required)")
    ap.add_argument("--n", type=int, default=3, help="evenly spaced val inputs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.model, args.data, args.n, args.threads)
        return
    if not args.other_src:
        ap.error("--other-src is required")
    here = str(Path(__file__).resolve().parents[1] / "src")
    mine, other = run(here, args), run(args.other_src, args)
    print(f"{'input':>5s} {'mode':9s} {'color':5s} " + " ".join(f"{a:>10s}" for a in ARRAYS))
    same_all = 0
    for key in sorted(mine):
        a, b = mine[key], other.get(key, {})
        flags = ["same" if a[k] == b.get(k) else "DIFFERENT" for k in ARRAYS]
        same_all += all(f == "same" for f in flags[:4])
        print(f"{key[0]:5d} {key[1]:9s} {key[2]:5s} " + " ".join(f"{f:>10s}" for f in flags))
    print(f"{same_all} of {len(mine)} cases: outputs and correspondences identical")


if __name__ == "__main__":
    main()
