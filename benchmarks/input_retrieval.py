"""Input-aware retrieval (issue 16, part 4): how close the retrieved exemplars are to the held-out photo,
as the input's own similarity gets more weight.

For ``--inputs`` seeded val inputs: f(x), one global search of the ``rerank_k`` nearest by f(x), then for
every weight w in ``--weights`` the ``top_k`` re-ranked by ``(1 - w) sim(f(x), f(x_n)) + w sim(x, x_n)``
(:func:`pixelnn.retrieval.rerank`, the pipeline's own step), and for every input-descriptor grid in
``--grids`` (:func:`pixelnn.retrieval.input_descriptors`). Per setting it prints, averaged over inputs
(paired differences to w = 0 with their standard errors):

- LPIPS (v0.1 AlexNet) of the neighbours' photos y_k to the held-out photo: the mean over the K, and
  rank 1's: stage 2 copies its pixels from these photos, so closer neighbours give closer outputs;
- the mean input similarity sim(x, x_k) of the K (what the re-ranking raises).

Nothing here sees the photo except the metric. Usage::

    python benchmarks/input_retrieval.py --model runs/model-shoes-edges --data runs/shoes-edges --inputs 100 \\
        --weights 0,0.2,0.4,0.6,0.8,1 --grids 24
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--weights", default="0,0.2,0.4,0.6,0.8,1")
    ap.add_argument("--grids", default="24")
    ap.add_argument("--top-k", type=int, default=11)
    ap.add_argument("--rerank-k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from tqdm.auto import tqdm

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluate import select_inputs
    from pixelnn.evaluation.lpips import lpips_distance
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.retrieval import global_descriptors, input_descriptors, rerank

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    lib = pipe.library
    split = Dataset(args.data).split(args.split)
    picks = select_inputs(len(split), args.inputs, args.seed)  # the inputs `pixelnn evaluate` draws
    weights = [float(w) for w in args.weights.split(",")]
    grids = [int(g) for g in args.grids.split(",")]
    settings = [(g, w) for g in grids for w in weights]
    mean_lp = {s: [] for s in settings}
    first_lp = {s: [] for s in settings}
    in_sim = {s: [] for s in settings}
    for i in tqdm(picks, desc="inputs"):
        x, photo = pipe.check_input(np.asarray(split.inputs[i])), np.asarray(split.photos[i])
        f = pipe.stage1(x)
        sim, idx = lib.search(global_descriptors(f[None]), args.rerank_k)
        sim, idx = sim[0], idx[0]
        found = idx[idx >= 0]
        cand_inputs = lib.take("inputs", found)
        cand_photos = lib.take("photos", found)
        lp_all = lpips_distance(cand_photos, np.repeat(photo[None], len(found), 0))  # (M,), every candidate once
        pos_of = {int(p): j for j, p in enumerate(found)}
        for g in grids:
            cd, xd = input_descriptors(cand_inputs, grid=g), input_descriptors(x[None], grid=g)[0]
            for w in weights:
                _, top = rerank(sim, idx, xd, cd, w, args.top_k)
                rows = [pos_of[int(p)] for p in top if p >= 0]
                mean_lp[(g, w)].append(float(np.mean(lp_all[rows])))
                first_lp[(g, w)].append(float(lp_all[rows[0]]))
                in_sim[(g, w)].append(float(np.mean(cd[rows] @ xd)))
    n = len(picks)
    print(f"{n} {args.split} inputs, K = {args.top_k}, candidates {args.rerank_k} by f(x); LPIPS to the photo "
          f"(lower is better), paired difference to w = 0 (± s.e.)")
    print(f"{'grid':>4s} {'w':>4s} {'mean LPIPS of K':>16s} {'diff':>16s} {'rank-1 LPIPS':>13s} {'diff':>16s} "
          f"{'sim(x, x_k)':>11s}")
    for g in grids:
        base_m, base_f = np.array(mean_lp[(g, weights[0])]), np.array(first_lp[(g, weights[0])])
        for w in weights:
            m, f1 = np.array(mean_lp[(g, w)]), np.array(first_lp[(g, w)])
            dm, df = m - base_m, f1 - base_f
            se = lambda d: d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0  # noqa: E731
            print(f"{g:4d} {w:4.2f} {m.mean():16.4f} {dm.mean():+9.4f} ± {se(dm):.4f} {f1.mean():13.4f} "
                  f"{df.mean():+9.4f} ± {se(df):.4f} {np.mean(in_sim[(g, w)]):11.3f}")


if __name__ == "__main__":
    main()
