"""Approximate search (issue 17, part 1): ``search="coarse"`` against ``search="exact"`` on the same descriptors.

For ``--inputs`` seeded val inputs, the pipeline's own steps up to the pixel descriptors run once, then the
default mode's matcher runs with each search, timed back to back (interleaved, ``--repeats`` each; medians).
Per search it prints, averaged over inputs:

- the mean similarity of the matches: ``cos(q_i, e_k[j])`` of every output pixel i and the exemplar pixel j
  it copies (the issue's "mean best similarity"; the same measure for both searches), and its ratio to exact
  (the bar: at least 0.98);
- the mean patch similarity the matcher reports (coherent: its objective's unary term);
- the share of output pixels whose match is the exact search's;
- seconds of matching.

LPIPS (Rand-1 / Oracle) comes from ``pixelnn evaluate ... --search coarse`` (docs/results.md). Usage::

    python benchmarks/approx_search.py --model runs/model-shoes-sr --data runs/shoes-sr --inputs 50
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--searches", default="exact,coarse")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each search per input (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from tqdm.auto import tqdm

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluate import select_inputs
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    split = Dataset(args.data).split(args.split)
    picks = select_inputs(len(split), args.inputs, args.seed)  # the inputs `pixelnn evaluate` draws
    searches = args.searches.split(",")
    pixel_sim = {s: [] for s in searches}
    patch_sim = {s: [] for s in searches}
    same = {s: [] for s in searches}
    seconds = {s: [] for s in searches}
    for i in tqdm(picks, desc="inputs", unit="input"):
        x = pipe.check_input(np.asarray(split.inputs[int(i)]))
        base = pipe.check_options(SynthesisOptions())
        stage1 = pipe.stage1(x)
        neighbours = pipe.retrieve(stage1, base, x=x)
        specs = pipe.fit_specs(pipe.output_specs(base), neighbours, base, None)
        d = pipe.describe(x, stage1, neighbours, base)
        found = {}
        for search in searches:
            options = pipe.check_options(SynthesisOptions(search=search))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                m = pipe.match(d, specs, options)
                times.append(time.perf_counter() - t0)
            seconds[search].append(statistics.median(times))
            found[search] = m
            sim = (d.query[None] * d.exemplars[m.rank, m.pos]).sum(-1)  # (O, P): cos(q_i, e_k[j])
            pixel_sim[search].append(float(sim.mean()))
            patch_sim[search].append(float(m.similarity.float().mean()))
        ref = found[searches[0]]
        for search in searches:
            m = found[search]
            same[search].append(float(((m.rank == ref.rank) & (m.pos == ref.pos)).float().mean()))
    mean = lambda v: float(np.mean(v))  # noqa: E731
    print(f"{len(picks)} {args.split} inputs of {args.data}; default mode {base.mode}; {args.threads} threads")
    print(f"{'search':8s} {'pixel sim':>10s} {'ratio':>7s} {'patch sim':>10s} {'same match':>11s} {'matching (s)':>13s}")
    for search in searches:
        ratio = np.mean(np.array(pixel_sim[search]) / np.array(pixel_sim[searches[0]]))
        print(f"{search:8s} {mean(pixel_sim[search]):10.4f} {ratio:7.4f} {mean(patch_sim[search]):10.4f} "
              f"{mean(same[search]):11.3f} {statistics.median(seconds[search]):13.3f}")


if __name__ == "__main__":
    main()
