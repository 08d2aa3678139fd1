"""Diverse neighbours (issue 16): how unlike each other and how close to the held-out photo the ``top_k``
retrieved exemplars are, as the diversity weight of :func:`pixelnn.retrieval.diverse_subset` grows.

For ``--inputs`` seeded val inputs: f(x), one global search of the ``rerank_k`` nearest by f(x), their relevance
as the pipeline ranks them (input-aware with the task's ``input_weight``), then for every redundancy measure in
``--measures`` and weight in ``--weights`` the ``top_k`` picked by greedy maximal marginal relevance. Per
setting it prints, averaged over inputs:

- the mean LPIPS (v0.1 AlexNet) of the K photos to the held-out photo (what stage 2 can copy: lower is better);
- the mean LPIPS between consecutive picked photos (a diversity proxy: higher is more diverse).

Redundancy measures: ``global`` (the library's conv5 descriptors of f(x_n), what the pipeline uses),
``appearance`` (:func:`appearance_descriptors` of the photos, below), ``input`` (the exemplars' inputs). Usage::

    python benchmarks/diverse_retrieval.py --model runs/model-shoes-edges --data runs/shoes-edges --inputs 60
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch


def appearance_descriptors(photos: np.ndarray, grid: int = 12) -> np.ndarray:
    """Descriptors of exemplar photos, a redundancy measure compared here: colour thumbnails, blurred, unit-norm.

    Each photo (s, s, 3) is area-averaged to ``grid`` x ``grid`` and blurred like
    :func:`pixelnn.retrieval.input_descriptors`; its values are centred on the batch's mean thumbnail (not per image), so
    that both colour and layout differences between exemplars count, and the rows are L2-normalised.

    Parameters
    ----------
    photos : ndarray, (M, s, s, 3) uint8
    grid : int

    Returns
    -------
    ndarray, (M, g * g * 3) float32
    """
    x = np.asarray(photos)
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[1] != x.shape[2]:
        raise ValueError(f"appearance_descriptors expects (M, s, s, C) uint8 photos, got {x.shape} {x.dtype}")
    n, s, _, c = x.shape
    g = grid if s % grid == 0 else s
    if n == 0:
        return np.zeros((0, g * g * c), np.float32)
    from pixelnn.retrieval import pool_and_blur

    v = pool_and_blur(x.astype(np.float32) / 255.0, g).reshape(n, -1)  # (M, D)
    d = v - v.mean(axis=0, keepdims=True)  # centred on the batch
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return np.where(norm > 1e-12, d / np.maximum(norm, 1e-12), 0.0).astype(np.float32)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=60)
    ap.add_argument("--weights", default="0,0.2,0.4,0.6")
    ap.add_argument("--measures", default="global,appearance,input")
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
    from pixelnn.retrieval import DEFAULT_INPUT_WEIGHT, diverse_subset, global_descriptors, input_descriptors, rerank

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    lib = pipe.library
    w_in = DEFAULT_INPUT_WEIGHT.get(pipe.task.name, 0.0)
    split = Dataset(args.data).split(args.split)
    picks = select_inputs(len(split), args.inputs, args.seed)  # the inputs `pixelnn evaluate` draws
    weights = [float(w) for w in args.weights.split(",")]
    measures = args.measures.split(",")
    settings = [(m, w) for m in measures for w in weights]
    to_photo = {s: [] for s in settings}
    between = {s: [] for s in settings}
    for i in tqdm(picks, desc="inputs"):
        x, photo = pipe.check_input(np.asarray(split.inputs[i])), np.asarray(split.photos[i])
        f = pipe.stage1(x)
        sim, idx = lib.search(global_descriptors(f[None]), args.rerank_k)
        sim, idx = sim[0], idx[0]
        found = idx[idx >= 0]
        cand_inputs = lib.take("inputs", found)
        rel, order = rerank(sim, idx, input_descriptors(x[None])[0], input_descriptors(cand_inputs), w_in, len(found))
        pos_of = {int(p): j for j, p in enumerate(found)}
        rows = np.array([pos_of[int(p)] for p in order])  # candidates by relevance
        photos = lib.take("photos", found[rows])
        lp_photo = lpips_distance(photos, np.repeat(photo[None], len(rows), 0))
        descs = {"appearance": appearance_descriptors(photos), "global": lib.take("global", found[rows]),
                 "input": input_descriptors(cand_inputs[rows])}
        pair_cache: dict[tuple[int, int], float] = {}
        for m in measures:
            d = descs[m].astype(np.float64)
            red = d @ d.T
            for w in weights:
                top = diverse_subset(rel, red, w, args.top_k)
                to_photo[(m, w)].append(float(lp_photo[top].mean()))
                need = [(int(a), int(b)) for a, b in zip(top[:-1], top[1:]) if (int(a), int(b)) not in pair_cache]
                if need:
                    got = lpips_distance(photos[[a for a, _ in need]], photos[[b for _, b in need]])
                    pair_cache.update(zip(need, got))
                between[(m, w)].append(float(np.mean([pair_cache[(int(a), int(b))] for a, b in zip(top[:-1], top[1:])])))
    print(f"{len(picks)} {args.split} inputs, K = {args.top_k} of {args.rerank_k} candidates (input weight {w_in}); "
          "LPIPS of the K photos to the held-out photo, and between consecutive picks")
    print(f"{'measure':>10s} {'w':>4s} {'to photo':>9s} {'diff':>16s} {'between':>8s} {'diff':>16s}")
    se = lambda d: d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0  # noqa: E731
    for m in measures:
        b_p, b_b = np.array(to_photo[(m, weights[0])]), np.array(between[(m, weights[0])])
        for w in weights:
            p, b = np.array(to_photo[(m, w)]), np.array(between[(m, w)])
            print(f"{m:>10s} {w:4.2f} {p.mean():9.4f} {(p - b_p).mean():+9.4f} ± {se(p - b_p):.4f} "
                  f"{b.mean():8.4f} {(b - b_b).mean():+9.4f} ± {se(b - b_b):.4f}")


if __name__ == "__main__":
    main()
