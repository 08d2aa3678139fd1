"""Speed of stage 2: seconds for 72 outputs at 96x96, against the floor of exact search, and before/after.

The floor is the time of the matrix products that exact whole-image search cannot avoid: every
query pixel against every pixel of the K = 11 exemplars, (P x d) @ (d x K*P) with P = 96*96, for
the same descriptor size d. The pipeline computes all four windows and all 18 exemplar sets
from that one product, so its time over the floor measures everything else (stage 1, retrieval,
descriptors, window maxima, composition). The PCA-reduced descriptor is timed twice: computing the
neighbours' pixel descriptors on the fly, and reading them from the library's pixel cache
(``pixelnn index --pixel-cache``, or filled as exemplars get retrieved).

Each configuration runs in a worker subprocess (one per code version) that loads the pipeline once and
answers one ``pipe(x, SynthesisOptions())`` per request; the floor runs in this process, right after.
With ``--compare-src PATH`` the same configurations are also timed with the code at PATH
(``PYTHONPATH=PATH``, e.g. the code before a change, whose API may be the older
``pipe(x, mode=...)`` one), interleaved: repeat k runs old, then new, then the floor, back to back, and
the table gives both medians and the median of the per-repeat ratios new/old (their min and max show
the noise). The two versions' outputs are compared by digest.

Usage::

    python benchmarks/stage2_speed.py --model runs/model-shoes-sr --data runs/shoes-sr [--repeats 5] \
        [--threads 2] [--skip-full] [--search exact] [--autocast off] [--compare-src /tmp/old/src]

The pixel cache (``MODEL/library/pixel_cache``) is written to: point ``--model`` at a writable copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


class Floor:
    """The unavoidable products (P x d) @ (d x K*P) of exact whole-image search, for one size.

    Two layouts are timed, each into one preallocated output (a fresh output per block is 2x
    slower): row blocks of 1024 query pixels against all K exemplars at once, and blocks of 512
    rows against one exemplar at a time. A call returns the faster of the two.
    """

    def __init__(self, p: int, k: int, d: int):
        g = torch.Generator().manual_seed(0)
        self.p, self.k = p, k
        self.q = torch.nn.functional.normalize(torch.randn(p, d, generator=g), dim=1)
        ex = torch.nn.functional.normalize(torch.randn(k, p, d, generator=g), dim=2)
        self.all_t = ex.reshape(k * p, d).T.contiguous()  # (d, K*P)
        self.each_t = [e.T.contiguous() for e in ex]  # K x (d, P)

    def _time(self, f) -> float:
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    def _all_at_once(self, chunk: int = 1024) -> None:
        out = torch.empty(min(chunk, self.p), self.k * self.p)
        for s in range(0, self.p, chunk):
            q = self.q[s:s + chunk]
            torch.mm(q, self.all_t, out=out[:len(q)])

    def _one_by_one(self, chunk: int = 512) -> None:
        out = torch.empty(min(chunk, self.p), self.p)
        for s in range(0, self.p, chunk):
            q = self.q[s:s + chunk]
            for e in self.each_t:
                torch.mm(q, e, out=out[:len(q)])

    def __call__(self) -> float:
        return min(self._time(self._all_at_once), self._time(self._one_by_one))


# ---------------------------------------------------------------------- worker (runs with either code)
def worker(config: dict) -> None:
    """Load one pipeline, then answer each line on stdin with one timed run as a JSON line on stdout.

    Handles both APIs: ``SynthesisOptions`` (``pipe(x, options)``) and the older keyword one
    (``pipe(x, mode=...)``, detected by ``PixelNNPipeline._describe``); both run the default options.
    """
    import pixelnn
    from pixelnn.data.dataset import Dataset
    from pixelnn.pipeline import PixelNNPipeline

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(config["threads"])
    try:
        from pixelnn.options import SynthesisOptions
    except ImportError:  # the code before SynthesisOptions
        SynthesisOptions = None
    old_api = SynthesisOptions is None or hasattr(PixelNNPipeline, "_describe")
    pipe = PixelNNPipeline.from_model_dir(config["model"], descriptor=config["descriptor"],
                                          pca_dims=config["pca_dims"], pixel_cache=config["cached"])
    x = np.asarray(Dataset(config["data"]).split("val").inputs[0])
    # code before issue 17 has no search (nor autocast)
    search = {k: config[k] for k in ("search", "autocast") if config.get(k)}
    run = (lambda: pipe(x, **search)) if old_api else (lambda: pipe(x, SynthesisOptions(**search)))
    desc = pipe.descriptor
    first = run()  # warm-up: weights, caches (and, with the pixel cache, the neighbours' descriptors)
    hello = {"src": str(Path(pixelnn.__file__).parent.parent), "api": "keywords" if old_api else "SynthesisOptions",
             "name": desc.name, "dims": int(desc.dims), "size": int(first.stage1.shape[0]),
             "k": int(len(first.neighbours)), "threads": torch.get_num_threads()}
    print(json.dumps(hello), flush=True)
    while sys.stdin.readline().strip():  # an empty line or EOF ends the worker
        t0 = time.perf_counter()
        r = run()
        wall = time.perf_counter() - t0
        digest = hashlib.sha256(np.ascontiguousarray(r.outputs).tobytes()).hexdigest()[:16]
        print(json.dumps({"wall": wall, "timings": {k: float(v) for k, v in r.timings.items()},
                          "digest": digest}), flush=True)


class Worker:
    """A worker subprocess running the code at ``src`` for one configuration."""

    def __init__(self, src: str, config: dict):
        env = dict(os.environ, PYTHONPATH=src)
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def __call__(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--descriptor", default="hypercolumn")
    ap.add_argument("--skip-full", action="store_true", help="skip the full-size descriptor (slow: ~25 s per call)")
    ap.add_argument("--search", default=None, help="SynthesisOptions.search of the new code (default: the mode's)")
    ap.add_argument("--autocast", default=None, help="SynthesisOptions.autocast of the new code (default: auto)")
    ap.add_argument("--compare-src", default=None, metavar="PATH",
                    help="also time the code at PATH (PYTHONPATH=PATH), interleaved with this code")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if not args.model or not args.data:
        ap.error("--model and --data are required")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    import pixelnn

    new_src = str(Path(pixelnn.__file__).resolve().parent.parent)
    print(f"torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}; this code: {new_src}"
          + (f"; compared with: {args.compare_src}" if args.compare_src else ""))
    print("medians over repeats; the ratios are medians of per-repeat ratios (runs and floor timed back to back"
          + (", repeat k: old, new, floor)" if args.compare_src else ")"))
    # The 2 vCPUs here are noisy (the same product varies by +-25% from minute to minute), so each
    # repeat times the pipeline(s) and the floor back to back and the ratios are taken per repeat.
    configs = [(64, False), (64, True)] + ([] if args.skip_full else [(None, False)])
    med = statistics.median
    rows, compare = [], []
    for pca_dims, cached in configs:
        config = {"model": args.model, "data": args.data, "descriptor": args.descriptor, "pca_dims": pca_dims,
                  "search": args.search, "autocast": args.autocast,
                  "cached": cached, "threads": args.threads}
        new = Worker(new_src, config)
        old = Worker(args.compare_src, {**config, "search": None, "autocast": None}) if args.compare_src else None
        info = new.info
        floor = Floor(info["size"] ** 2, info["k"], info["dims"])
        floor()
        runs, old_runs, floors = [], [], []
        for _ in range(args.repeats):
            if old is not None:
                old_runs.append(old())
            runs.append(new())
            floors.append(floor())
        new.close()
        if old is not None:
            old.close()
        name = info["name"] + (" (pixel cache)" if cached else "")
        total = [r["timings"]["total"] for r in runs]
        matching = [r["timings"]["matching"] for r in runs]
        rows.append((name, info["dims"], med(total), med(matching), med(floors),
                     med([t / f for t, f in zip(total, floors)]), med([m / f for m, f in zip(matching, floors)]),
                     {k: round(med([r["timings"][k] for r in runs]), 3) for k in runs[0]["timings"]},
                     max(floors) / min(floors)))
        if old is not None:
            old_total = [r["timings"]["total"] for r in old_runs]
            ratios = [n / o for n, o in zip(total, old_total)]
            same = {r["digest"] for r in runs} == {r["digest"] for r in old_runs} and len({r["digest"] for r in runs}) == 1
            compare.append((name, med(old_total), med(total), med(ratios), min(ratios), max(ratios),
                            {k: round(med([r["timings"][k] for r in old_runs]), 3) for k in old_runs[0]["timings"]},
                            rows[-1][7], same, old.info["api"]))
    print(f"{'descriptor':40s} {'dims':>5s} {'72 outputs (s)':>15s} {'matching (s)':>13s} {'floor (s)':>10s} "
          f"{'total/floor':>12s} {'matching/floor':>15s}")
    for name, dims, total, matching, fl, rt, rm, steps, spread in rows:
        print(f"{name:40s} {dims:5d} {total:15.2f} {matching:13.2f} {fl:10.2f} {rt:12.2f} {rm:15.2f}")
        print(f"    per step (s): {steps}; floor max/min over repeats {spread:.2f}")
    if compare:
        print(f"\nbefore/after ({args.repeats} interleaved repeats; old = {args.compare_src}, new = {new_src})")
        print(f"{'descriptor':40s} {'old 72 outputs (s)':>19s} {'new 72 outputs (s)':>19s} {'new/old':>8s} "
              f"{'min':>6s} {'max':>6s}  outputs")
        for name, o, n, r, lo, hi, old_steps, new_steps, same, api in compare:
            print(f"{name:40s} {o:19.2f} {n:19.2f} {r:8.3f} {lo:6.3f} {hi:6.3f}  "
                  f"{'identical' if same else 'DIFFER'}")
            print(f"    old per step (s, {api} API): {old_steps}")
            print(f"    new per step (s): {new_steps}")
        print("new/old: median of per-repeat ratios; min/max: their range over repeats (the noise of this machine)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
