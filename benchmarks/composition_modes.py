"""Composition modes compared on held-out photos: seam rate, LPIPS Rand-1 / Oracle, diversity, time.

For each of ``--n`` evenly spaced photos of a prepared dataset's split, the pipeline's public steps
``stage1``, ``retrieve`` and ``describe`` run once; then every variant (a
:class:`~pixelnn.options.SynthesisOptions`, resolved with ``pipe.check_options``) runs ``pipe.match``
(shared between variants of the same mode and patch size), ``pipe.compose`` and its mode's
``recorded`` correspondences, and is measured against the photo:

- seam rate (:func:`pixelnn.evaluation.coherence.seam_rate`, mean over outputs);
- LPIPS v0.1 (AlexNet) of one seeded random output (Rand-1) and of the best output (Oracle);
- diversity: mean LPIPS between consecutive outputs of 20 seeded outputs (BicycleGAN);
- seconds of the variant's own steps per input: its matching (once per mode and patch size, counted
  for every variant that shares it) plus its composition.

Usage::

    python benchmarks/composition_modes.py --model runs/model-shoes-edges --data runs/shoes-edges \
        --n 20 [--variants matched,coherent,global,authors] [--out DIR] [--check]

``--check`` asserts, on the first input, that every variant's outputs and recorded correspondences
equal ``pipe(x, options)``'s exactly. Prints one row per variant; with ``--out`` writes
``metrics.json`` and a side-by-side figure.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pixelnn.data.dataset import Dataset, image_grid, resize_nearest
from pixelnn.evaluation.coherence import seam_mask, seam_rate
from pixelnn.evaluation.lpips import lpips_distance
from pixelnn.io import save_image, write_json
from pixelnn.modes import get_mode
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline

#: name -> options (None fields take the mode's defaults, pixelnn.modes)
VARIANTS = {
    "matched": SynthesisOptions(mode="matched"),  # paper eq. 3
    "coherent": SynthesisOptions(mode="coherent"),  # the coherent mode's defaults
    "global": SynthesisOptions(mode="global"),  # paper eq. 2
    "authors": SynthesisOptions(mode="authors"),  # the authors' released code
    # ablations: one ingredient at a time
    "coherent-matches-only": SynthesisOptions(mode="coherent", vote_size=1, highpass_sigma=0.0, chroma_weight=1.0),
    "coherent+vote": SynthesisOptions(mode="coherent", vote_size=3, highpass_sigma=0.0, chroma_weight=1.0),
    "coherent+vote+chroma0.3": SynthesisOptions(mode="coherent", vote_size=3, highpass_sigma=0.0, chroma_weight=0.3),
    "coherent+vote+chroma0.5": SynthesisOptions(mode="coherent", vote_size=3, highpass_sigma=0.0, chroma_weight=0.5),
    "coherent+vote+highpass12": SynthesisOptions(mode="coherent", vote_size=3, highpass_sigma=12.0,
                                                 chroma_weight=1.0),
    "coherent-patch7": SynthesisOptions(mode="coherent", patch_size=7, vote_size=3, highpass_sigma=0.0,
                                        chroma_weight=0.5),
    "matched+chroma0.5": SynthesisOptions(mode="matched", chroma_weight=0.5),
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


def run_variant(pipe: PixelNNPipeline, stage1: np.ndarray, neighbours, descriptors, specs, opts: SynthesisOptions,
                match_cache: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One variant from the shared steps: outputs (O, S, S, 3), recorded exemplar rank, source y, x (O, S, S),
    and the seconds of its matching (shared by mode and patch size) plus its composition."""
    key = (opts.mode, opts.patch_size)
    if key not in match_cache:
        t0 = time.perf_counter()
        match_cache[key] = (pipe.match(descriptors, specs, opts), time.perf_counter() - t0)
    matches, match_seconds = match_cache[key]
    t0 = time.perf_counter()
    outs = pipe.compose(stage1, neighbours, matches, specs, opts)
    seconds = match_seconds + time.perf_counter() - t0
    rank, pos = get_mode(opts.mode).recorded(matches, specs)
    o, (h, w) = len(specs), stage1.shape[:2]
    rank = rank.cpu().numpy().reshape(o, h, w)
    sy, sx = np.divmod(pos.cpu().numpy().reshape(o, h, w), w)
    return outs, rank, sy, sx, seconds


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
    ap.add_argument("--check", action="store_true",
                    help="assert on the first input that every variant equals pipe(x, options) exactly")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    pipe = PixelNNPipeline.from_model_dir(args.model)
    options = {n: pipe.check_options(VARIANTS[n]) for n in names}
    base = options[names[0]]
    shared = ("top_k", "sets", "windows", "descriptor", "pca_dims", "num_outputs", "seed", "where", "exemplars",
              "like", "like_k")
    for n, o in options.items():  # the shared steps must be the same for every variant
        if any(getattr(o, f) != getattr(base, f) for f in shared):
            ap.error(f"variant {n} differs from {names[0]} in options of the shared steps ({', '.join(shared)})")
    split = Dataset(args.data).split(args.split)
    pick = np.unique(np.linspace(0, len(split) - 1, min(args.n, len(split))).astype(int))
    specs = pipe.output_specs(base)
    allowed = pipe.allowed_positions(base)
    rows = {n: [] for n in names}
    rng = np.random.default_rng(args.seed)
    # the figure: for the first inputs, the patchy kinds of output (several exemplars, large windows)
    shown = [o for o, s in enumerate(specs) if (len(s.ranks), s.window) in ((1, 11), (3, 11), (3, None), (5, 7),
                                                                             (5, None))][:6]
    figure_rows = []
    checked = 0
    for n_in, i in enumerate(tqdm(pick, desc="inputs", unit="input", disable=None)):
        x, photo = pipe.check_input(np.asarray(split.inputs[i])), np.asarray(split.photos[i])
        stage1 = pipe.stage1(x)
        neighbours = pipe.retrieve(stage1, base, allowed)
        in_specs = pipe.fit_specs(specs, neighbours, base, allowed)
        descriptors = pipe.describe(x, stage1, neighbours, base)
        size = stage1.shape[0]
        o = len(in_specs)
        rand = int(rng.integers(o))
        order = rng.permutation(o)[:20]
        match_cache: dict = {}
        for name in names:
            opts = options[name]
            outs, rank, sy, sx, seconds = run_variant(pipe, stage1, neighbours, descriptors, in_specs, opts,
                                                      match_cache)
            if args.check and n_in == 0:
                ref = pipe(x, opts.replace(order="grid"))  # the steps' order (issue 16: default best first)
                exemplar = neighbours.positions[rank]
                same = (np.array_equal(ref.outputs, outs), np.array_equal(ref.exemplar, exemplar),
                        np.array_equal(ref.source_y, sy), np.array_equal(ref.source_x, sx))
                assert all(same), (f"variant {name}: steps differ from pipe(x, options) "
                                   f"(outputs, exemplar, source_y, source_x equal: {same})")
                checked += 1
            seams = seam_rate(rank, sy, sx)
            d = lpips_distance(outs, np.repeat(photo[None], o, 0))
            div = float(lpips_distance(outs[order[:-1]], outs[order[1:]]).mean())
            if len(figure_rows) < 4 * len(names) and name in ("matched", "coherent"):
                seam = seam_overlay(outs[shown], rank[shown], sy[shown], sx[shown])
                figure_rows.append((name, np.concatenate([x_rgb(x, size)[None], stage1[None], outs[shown], photo[None]]),
                                    seam))
            rows[name].append({"seam_rate": float(np.mean(seams)), "rand1_lpips": float(d[rand]),
                               "oracle_lpips": float(d.min()), "diversity": div, "seconds": seconds,
                               "stage1_lpips": float(lpips_distance(stage1[None], photo[None])[0])})
    if args.check:
        print(f"check: {checked} variants equal pipe(x, options) exactly on input {pick[0]} "
              f"(outputs and recorded exemplar, source_y, source_x)")
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
                                          "num_inputs": len(pick),
                                          "variants": {n: options[n].to_dict() for n in names},
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
