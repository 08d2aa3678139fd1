"""Composition modes compared on held-out photos: seam rate, LPIPS Rand-1 / Oracle, diversity, time.

For each of ``--n`` evenly spaced photos of a prepared dataset's split, stage 1, retrieval,
descriptors and windowed matching run once; then every variant composes its 72 outputs from
those matches and is measured against the photo:

- seam rate (:func:`pixelnn.evaluation.coherence.seam_rate`, mean over outputs);
- LPIPS v0.1 (AlexNet) of one seeded random output (Rand-1) and of the best output (Oracle);
- diversity: mean LPIPS between consecutive outputs of 20 seeded outputs (BicycleGAN);
- seconds of the variant's own steps (coherent matching + composition) per input.

Usage::

    python benchmarks/composition_modes.py --model runs/model-shoes-edges --data runs/shoes-edges \
        --n 20 [--variants matched,coherent,global,authors] [--out DIR]

Prints one row per variant; with ``--out`` writes ``metrics.json`` and a side-by-side figure.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pixelnn.compose import MODE_DEFAULTS, compose, recorded_matches
from pixelnn.data.dataset import Dataset, image_grid, resize_nearest
from pixelnn.evaluation.coherence import seam_mask, seam_rate
from pixelnn.evaluation.lpips import lpips_distance
from pixelnn.matching import DEFAULT_PATCH_SIZE, coherent_matches, default_output_specs, match_windows, select_sets
from pixelnn.models.regressor import predict
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.io import save_image, write_json
from pixelnn.retrieval import global_descriptors

#: name -> (mode, color, coherent-matching patch side or None, vote, highpass_sigma, chroma_weight)
VARIANTS = {
    "matched": ("matched", "rgb", None, 1, 0.0, 1.0),  # paper eq. 3
    "coherent": ("coherent", "rgb", DEFAULT_PATCH_SIZE, MODE_DEFAULTS["coherent"]["vote_size"],
                 MODE_DEFAULTS["coherent"]["highpass_sigma"], MODE_DEFAULTS["coherent"]["chroma_weight"]),
    "global": ("global", "rgb", None, 1, 0.0, 1.0),  # paper eq. 2
    "authors": ("authors", "rgb", None, 1, 0.0, 1.0),  # the authors' released code
    # ablations: one ingredient at a time
    "coherent-matches-only": ("coherent", "rgb", DEFAULT_PATCH_SIZE, 1, 0.0, 1.0),
    "coherent+vote": ("coherent", "rgb", DEFAULT_PATCH_SIZE, 3, 0.0, 1.0),
    "coherent+vote+chroma0.3": ("coherent", "rgb", DEFAULT_PATCH_SIZE, 3, 0.0, 0.3),
    "coherent+vote+chroma0.5": ("coherent", "rgb", DEFAULT_PATCH_SIZE, 3, 0.0, 0.5),
    "coherent+vote+highpass12": ("coherent", "rgb", DEFAULT_PATCH_SIZE, 3, 12.0, 1.0),
    "coherent-patch7": ("coherent", "rgb", 7, 3, 0.0, 0.5),
    "matched+chroma0.5": ("matched", "rgb", None, 1, 0.0, 0.5),
}


def x_rgb(x: np.ndarray, size: int) -> np.ndarray:
    """A model input (s, s, C) as an RGB image of side ``size`` (nearest)."""
    x = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x
    return resize_nearest(x[None], size)[0]


def seam_overlay(outputs: np.ndarray, exemplar: np.ndarray, source_y: np.ndarray, source_x: np.ndarray) -> np.ndarray:
    """Outputs (N, S, S, 3) greyed, with the pixels on a seam (:func:`seam_mask`) in red."""
    horizontal, vertical = seam_mask(exemplar, source_y, source_x)
    on = np.zeros(exemplar.shape, bool)
    on[..., :, 1:] |= horizontal
    on[..., :, :-1] |= horizontal
    on[..., 1:, :] |= vertical
    on[..., :-1, :] |= vertical
    grey = outputs.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1) * 0.5 + 127
    grey[on] = (220, 30, 30)
    return grey.astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    pipe = PixelNNPipeline.from_model_dir(args.model)
    split = Dataset(args.data).split(args.split)
    pick = np.unique(np.linspace(0, len(split) - 1, min(args.n, len(split))).astype(int))
    specs = default_output_specs()
    windows = tuple(dict.fromkeys(s.window for s in specs))
    rows = {n: [] for n in names}
    rng = np.random.default_rng(args.seed)
    # the figure: for the first inputs, the patchy kinds of output (several exemplars, large windows)
    shown = [o for o, s in enumerate(specs) if (len(s.ranks), s.window) in ((1, 11), (3, 11), (3, None), (5, 7),
                                                                             (5, None))][:6]
    figure_rows = []
    for i in tqdm(pick, desc="inputs", unit="input"):
        x, photo = np.asarray(split.inputs[i]), np.asarray(split.photos[i])
        stage1 = predict(pipe.regressor, x[None])[0]
        _, idx = pipe.library.search(global_descriptors(stage1[None]), 11, None)
        nb = idx[0]
        ex_photos, ex_stage1 = np.asarray(pipe.library.photos[nb]), np.asarray(pipe.library.stage1[nb])
        desc = pipe._describe(x, stage1, nb, ex_stage1)
        size = stage1.shape[0]
        outer = max(w for w in windows if w is not None)
        wsims = torch.empty(len(nb), size * size, outer * outer)
        best_sim, best_pos = match_windows(desc[0], desc[1:], size, size, windows, window_sims=wsims)
        rank0, pos0, _ = select_sets(best_sim, best_pos, specs, windows)
        rand = int(rng.integers(len(specs)))
        order = rng.permutation(len(specs))[:20]
        for name in names:
            mode, color, coh, vote, hp, chroma = VARIANTS[name]
            t0 = time.perf_counter()
            rank, pos = rank0, pos0
            if coh is not None:
                rank, pos, _ = coherent_matches(desc[0], desc[1:], size, size, specs, windows, wsims,
                                                patch=coh)
            outs = compose(stage1, ex_photos, ex_stage1, rank, pos, specs, mode=mode, color=color,
                           best_sim=best_sim, windows=windows, vote=vote, highpass_sigma=hp,
                           chroma_weight=chroma)
            seconds = time.perf_counter() - t0
            o = len(specs)
            rank, pos = recorded_matches(mode, specs, rank, pos)
            sy, sx = np.divmod(pos.numpy().reshape(o, size, size), size)
            seams = seam_rate(rank.numpy().reshape(o, size, size), sy, sx)
            d = lpips_distance(outs, np.repeat(photo[None], o, 0))
            div = float(lpips_distance(outs[order[:-1]], outs[order[1:]]).mean())
            if len(figure_rows) < 4 * len(names) and name in ("matched", "coherent"):
                seam = seam_overlay(outs[shown], rank.numpy().reshape(o, size, size)[shown], sy[shown], sx[shown])
                figure_rows.append((name, np.concatenate([x_rgb(x, size)[None], stage1[None], outs[shown], photo[None]]),
                                    seam))
            rows[name].append({"seam_rate": float(np.mean(seams)), "rand1_lpips": float(d[rand]),
                               "oracle_lpips": float(d.min()), "diversity": div, "seconds": seconds,
                               "stage1_lpips": float(lpips_distance(stage1[None], photo[None])[0])})
    print(f"{args.model} on {args.data} {args.split}, {len(pick)} inputs x {len(specs)} outputs")
    print(f"{'variant':24s} seam  rand1  oracle  divers  s/input")
    for name in names:
        m = {k: np.mean([r[k] for r in rows[name]]) for k in rows[name][0]}
        print(f"{name:24s} {m['seam_rate']:.3f} {m['rand1_lpips']:.4f} {m['oracle_lpips']:.4f} "
              f"{m['diversity']:.4f} {m['seconds']:.3f}")
    print(f"stage 1 LPIPS {np.mean([r['stage1_lpips'] for r in rows[names[0]]]):.4f}")
    if args.out:
        out = Path(args.out)
        summary = {n: {k: float(np.mean([r[k] for r in rows[n]])) for k in rows[n][0]} for n in names}
        write_json(out / "metrics.json", {"model": args.model, "data": args.data, "split": args.split,
                                          "num_inputs": len(pick), "variants": {n: VARIANTS[n] for n in names},
                                          "summary": summary, "rows": rows})
        blank = np.full((1, size, size, 3), 255, np.uint8)
        grid_rows = []
        for name, images, seam in figure_rows[:6]:
            grid_rows += [images, np.concatenate([blank, blank, seam])]
        save_image(out / "side_by_side.png", image_grid(grid_rows))
        print(f"wrote {out / 'metrics.json'} and {out / 'side_by_side.png'} (rows: input, f(x), outputs "
              f"{[o + 1 for o in shown]}, photo; under each row its seams in red; matched then coherent)")


if __name__ == "__main__":
    main()
