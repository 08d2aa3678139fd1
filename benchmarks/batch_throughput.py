"""Batch throughput of stage 2, and how far batched results agree with single-input ones.

Inputs per second of ``pipe.batch(inputs, options)`` at several batch sizes (batch size 1 is
``pipe(x, options)`` per input) over the same ``--n`` evenly spaced inputs of a prepared dataset's
split, on the model's exemplar library. The batch sizes are interleaved: repeat k runs every batch
size once, back to back, so the per-repeat throughput ratios against batch size 1 cancel most of a
shared machine's drift; the table gives medians, and the min/max of those ratios show the noise.

The pixel cache is warm (the neighbours of every input described beforehand, ``pipe.describe``); with
``--cold`` every batch size also runs once more against an empty pixel cache (a scratch library in a
temporary folder that links the library's files but has no ``pixel_cache``).

Batch sizes > 1 run in both modes of ``pipe.batch`` (``--convs``): ``exact`` (the convolution passes and the
search one input at a time: bit-identical to single runs) and ``batched`` (over the whole batch at once).

Agreement: for every batch size > 1, against batch size 1 on the same inputs, the fraction of
correspondences (exemplar, source_y, source_x) that are identical, the fraction of output pixels
identical in all three channels, and the max absolute pixel difference in 1/255 units; the targets
are >= 99.9% identical correspondences and every pixel within 1/255.

Usage::

    python benchmarks/batch_throughput.py --model runs/model-shoes-sr --data runs/shoes-sr [--n 32] \
        [--sizes 1,8,32] [--repeats 2] [--threads 2] [--mode matched] [--cold]

The pixel cache (``MODEL/library/pixel_cache``) is written to: point ``--model`` at a writable copy.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixelnn.data.dataset import Dataset
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline

TARGET_CORRESPONDENCES = 0.999
TARGET_MAX_DIFF = 1


def run(pipe: PixelNNPipeline, inputs: np.ndarray, size: int, options: SynthesisOptions,
        exact: bool = True) -> tuple[float, list]:
    """Seconds to synthesize all ``inputs`` in batches of ``size`` (1: one ``pipe(x)`` each), and the results;
    ``exact``: ``pipe.batch(..., exact=)`` (convolutions one input at a time, or over the whole batch)."""
    t0 = time.perf_counter()
    if size == 1:
        results = [pipe(x, options) for x in inputs]
    else:
        results = [r for s in range(0, len(inputs), size)
                   for r in pipe.batch(inputs[s:s + size], options, exact=exact)]
    return time.perf_counter() - t0, results


def warm_cache(pipe: PixelNNPipeline, inputs: np.ndarray, options: SynthesisOptions) -> None:
    """Put the neighbours of every input in the pixel cache (``pipe.describe`` fills it), batched like ``run``."""
    for x, s1 in zip(inputs, pipe.stage1(inputs)):
        pipe.describe(x, s1, pipe.retrieve(s1, options, pipe.allowed_positions(options)), options)


def agreement(single: list, batched: list) -> dict[str, float]:
    """Identical correspondences and pixels of batched results against single-input ones."""
    same_corr = same_px = n_corr = n_px = inputs_differing = 0
    max_diff = max_diff_same_corr = 0
    for a, b in zip(single, batched):
        corr = (a.exemplar == b.exemplar) & (a.source_y == b.source_y) & (a.source_x == b.source_x)  # (O, S, S)
        same_corr += int(corr.sum())
        n_corr += corr.size
        diff = np.abs(a.outputs.astype(np.int16) - b.outputs.astype(np.int16)).max(-1)  # (O, S, S)
        same_px += int((diff == 0).sum())
        n_px += diff.size
        max_diff = max(max_diff, int(diff.max()))
        max_diff_same_corr = max(max_diff_same_corr, int(diff[corr].max(initial=0)))
        inputs_differing += int(not corr.all() or diff.any())
    return {"correspondences": same_corr / n_corr, "pixels": same_px / n_px, "max_diff": max_diff,
            "max_diff_same_corr": max_diff_same_corr, "inputs_differing": inputs_differing}


def scratch_library(lib_dir: Path) -> tempfile.TemporaryDirectory:
    """A temporary library folder linking ``lib_dir``'s files, without its pixel cache (a cold cache)."""
    tmp = tempfile.TemporaryDirectory(prefix="pixelnn-cold-")
    for entry in lib_dir.iterdir():
        if entry.name != "pixel_cache":
            os.symlink(entry.resolve(), Path(tmp.name) / entry.name)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=32, help="inputs per batch size")
    ap.add_argument("--sizes", default="1,8,32")
    ap.add_argument("--convs", default="exact,batched",
                    help="pipe.batch modes for sizes > 1: exact (convolutions per input: bit-identical to single "
                         "runs) and/or batched (convolutions over the whole batch)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="matched")
    ap.add_argument("--cold", action="store_true", help="also time each batch size once with an empty pixel cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.convs.split(",") if m.strip()]
    sizes = [(int(s), m) for s in args.sizes.split(",") for m in (["exact"] if int(s) == 1 else modes)]
    label = {c: (f"{c[0]}" if c[0] == 1 else f"{c[0]} {c[1]}") for c in sizes}
    pipe = PixelNNPipeline.from_model_dir(args.model)
    options = pipe.check_options(SynthesisOptions(mode=args.mode, order="grid"))  # compared output by output
    split = Dataset(args.data).split(args.split)
    pick = np.unique(np.linspace(0, len(split) - 1, min(args.n, len(split))).astype(int))
    inputs = np.stack([pipe.check_input(np.asarray(split.inputs[i])) for i in pick])
    t0 = time.perf_counter()
    warm_cache(pipe, inputs, options)
    print(f"{args.model}: {len(pipe.library)} exemplars; {len(inputs)} {args.split} inputs x "
          f"{len(pipe.output_specs(options))} outputs, mode {options.mode}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"pixel cache warmed for these inputs' neighbours in {time.perf_counter() - t0:.1f} s")
    pipe(inputs[0], options)  # warm-up: lazy weights, allocator
    seconds: dict[tuple, list[float]] = {c: [] for c in sizes}
    results: dict[tuple, list] = {}
    for k in range(args.repeats):
        for c in sizes:
            sec, res = run(pipe, inputs, c[0], options, exact=c[1] == "exact")
            seconds[c].append(sec)
            results.setdefault(c, res)
            print(f"  repeat {k + 1}, batch size {label[c]}: {sec:.2f} s ({len(inputs) / sec:.3f} inputs/s; "
                  f"load average {os.getloadavg()[0]:.2f})", flush=True)
    med = statistics.median
    base = sizes[0]
    print(f"\nwarm pixel cache: medians over {args.repeats} interleaved repeats (repeat k runs every batch size);"
          f" ratio = median of per-repeat throughput ratios against batch size {label[base]}")
    print(f"{'batch size':>16s} {'seconds':>8s} {'inputs/s':>9s} {'s/input':>8s} {'ratio':>6s} {'min':>6s} {'max':>6s}")
    for c in sizes:
        ratios = [b / a for a, b in zip(seconds[c], seconds[base])]
        sec = med(seconds[c])
        print(f"{label[c]:>16s} {sec:8.2f} {len(inputs) / sec:9.3f} {sec / len(inputs):8.3f} {med(ratios):6.3f} "
              f"{min(ratios):6.3f} {max(ratios):6.3f}")
    spread = {c: max(v) / min(v) for c, v in seconds.items()}
    print("noise: max/min seconds over repeats " + ", ".join(f"batch {label[c]}: {v:.2f}" for c, v in spread.items())
          + f"; load average now {os.getloadavg()[0]:.2f} (2 cores)")
    if args.cold:
        lib_dir = Path(pipe.library.root)
        print("\ncold pixel cache (one run per batch size, each with an empty cache: every neighbour described and"
              " written)")
        print(f"{'batch size':>16s} {'seconds':>8s} {'inputs/s':>9s} {'s/input':>8s}")
        for c in sizes:
            with scratch_library(lib_dir) as tmp:
                cold = PixelNNPipeline.from_model_dir(args.model, library_dir=tmp)
                cold(inputs[0], options)  # warm-up (fills the first input's neighbours: cheap next to the rest)
                sec, _ = run(cold, inputs, c[0], options, exact=c[1] == "exact")
                print(f"{label[c]:>16s} {sec:8.2f} {len(inputs) / sec:9.3f} {sec / len(inputs):8.3f}")
    print(f"\nagreement with batch size {label[base]} (single pipe(x) runs) on the same {len(inputs)} inputs; targets: "
          f">= {TARGET_CORRESPONDENCES:.1%} of correspondences identical, every pixel within {TARGET_MAX_DIFF}/255")
    print(f"{'batch size':>16s} {'identical correspondences':>26s} {'identical pixels':>17s} {'max |diff| (/255)':>18s}"
          f" {'same-corr. max |diff|':>22s} {'inputs differing':>17s}  correspondences / pixels target met")
    for c in sizes:
        if c == base:
            continue
        a = agreement(results[base], results[c])
        met_c = a["correspondences"] >= TARGET_CORRESPONDENCES
        met_p = a["max_diff"] <= TARGET_MAX_DIFF
        print(f"{label[c]:>16s} {a['correspondences']:26.6%} {a['pixels']:17.6%} {a['max_diff']:18d}"
              f" {a['max_diff_same_corr']:22d} {a['inputs_differing']:>10d} of {len(inputs):<3d}"
              f"  {'yes' if met_c else 'NO'} / {'yes' if met_p else 'NO'}")
    print("same-corr. max |diff|: over the pixels whose correspondence is identical (a different correspondence "
          "copies another exemplar pixel, so its pixel can differ by much more than 1/255)")


if __name__ == "__main__":
    main()
