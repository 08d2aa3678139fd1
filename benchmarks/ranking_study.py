"""Ranked outputs (issue 16 part 1): which per-output score picks the best first output, measured by LPIPS.

For ``--inputs`` seeded val inputs, synthesizes the 72 outputs in grid order and computes, per output, the
LPIPS to the real photo and several candidate scores (none of them sees the photo):

- ``faithfulness``: :func:`pixelnn.ranking.output_scores`, the pipeline's ranking (superres PSNR of the
  re-downsampled output, edge AP, normal angle);
- ``coherence``: minus the seam rate (:func:`pixelnn.evaluation.coherence.seam_rate`);
- ``similarity``: the mean match similarity of the output's pixels;
- ``faithfulness, windows > 1``: the faithfulness score among the outputs whose window is not 1x1;
- ``z(a) + z(b)``: sums of two of them, each standardised over the input's outputs;
- with ``--copied-edges`` (edge-map tasks): ``copied edges``, the edge AP of the edge map the output's
  correspondences copy (each pixel takes its source exemplar's stored input edge map at the source
  position: a gather, no HED pass), alone and as ``z(copied edges) + z(similarity)``, the pipeline's
  formula with it in place of the HED-based faithfulness.

Prints per candidate the mean LPIPS of its Top-1 output, its paired difference to the mean output
(mean ± s.e. over inputs), how often it beats the mean output, and the mean within-input Spearman
correlation between the score and minus the LPIPS. Rand-1 (the evaluation's kind of draw) and the Oracle
are printed for scale.

Usage::

    nice -n 19 python benchmarks/ranking_study.py --model MODEL_DIR --data DATA_DIR --inputs 50
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


def _z(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std() if a.std() > 0 else np.zeros_like(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--copied-edges", action="store_true", help="also score by the copied exemplars' edge maps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluate import select_inputs
    from pixelnn.evaluation.coherence import seam_rate
    from pixelnn.evaluation.lpips import lpips_distance
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.ranking import output_scores

    pipe = PixelNNPipeline.from_model_dir(args.model, device="cpu")
    split = Dataset(args.data).split(args.split)
    names = ("faithfulness", "coherence", "similarity", "faithfulness, windows > 1", "z(faithfulness) + z(coherence)",
             "z(faithfulness) + z(similarity)", "z(similarity) + z(coherence)")
    if args.copied_edges:
        names += ("copied edges", "z(copied edges) + z(similarity)")
    from pixelnn.evaluation.faithfulness import edge_faithfulness, input_edges
    from pixelnn.provenance import exemplar_ranks
    top: dict[str, list[float]] = {n: [] for n in names}
    rho: dict[str, list[float]] = {n: [] for n in names}
    mean, oracle, rand = [], [], []
    for pos in select_inputs(len(split), args.inputs, args.seed):
        x, photo = np.asarray(split.inputs[int(pos)]), np.asarray(split.photos[int(pos)])
        r = pipe(x, order="grid")
        lp = lpips_distance(np.ascontiguousarray(r.outputs), np.repeat(photo[None], len(r.outputs), 0))
        faith = output_scores(r.outputs, x, pipe.task)
        coh = -seam_rate(r.exemplar, r.source_y, r.source_x)
        wide = np.where([s.window != 1 for s in r.specs], faith, -np.inf)
        sim = r.similarity.reshape(len(lp), -1).mean(1)
        cands = {"faithfulness": faith, "coherence": coh, "similarity": sim, "faithfulness, windows > 1": wide,
                 "z(faithfulness) + z(coherence)": _z(faith) + _z(coh), "z(faithfulness) + z(similarity)": _z(faith) + _z(sim),
                 "z(similarity) + z(coherence)": _z(sim) + _z(coh)}
        if args.copied_edges:
            ex_edges = input_edges(pipe.library.take("inputs", r.neighbours))  # (K, S, S) bool
            copied = ex_edges[exemplar_ranks(r.exemplar, r.neighbours), r.source_y, r.source_x]  # (O, S, S)
            truth = np.broadcast_to(input_edges(x[None])[0], copied.shape)
            ap_copied = edge_faithfulness(copied.astype(np.float32), truth, 1.0)[0]
            cands.update({"copied edges": ap_copied, "z(copied edges) + z(similarity)": _z(ap_copied) + _z(sim)})
        for n, s in cands.items():
            top[n].append(float(lp[int(np.argmax(s))]))  # the first of the best: grid order breaks ties
            rho[n].append(_spearman(s, -lp))
        mean.append(float(lp.mean()))
        oracle.append(float(lp.min()))
        rand.append(float(lp[np.random.default_rng([args.seed, int(pos)]).integers(len(lp))]))
    mean_a = np.array(mean)
    print(f"{len(mean)} inputs of {args.split}, {len(lp)} outputs each: Rand-1 {np.mean(rand):.4f}, mean output "
          f"{mean_a.mean():.4f}, Oracle {np.mean(oracle):.4f} (LPIPS)")
    print("| score | Top-1 LPIPS | Top-1 - mean output (± s.e.) | beats the mean output | Spearman(score, -LPIPS) |")
    print("|---|---|---|---|---|")
    for n in names:
        t = np.array(top[n])
        d = t - mean_a
        print(f"| {n} | {t.mean():.4f} | {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f} | "
              f"{(d < 0).sum()} of {len(d)} | {np.nanmean(rho[n]):+.3f} |")


if __name__ == "__main__":
    main()
