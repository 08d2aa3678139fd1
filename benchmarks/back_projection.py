"""Does back-projection help? Issue 16 part 2, measured on a superres model's val split.

For each of ``--inputs`` seeded val inputs (``pixelnn.evaluate.select_inputs``), synthesizes the 72 outputs in
grid order, back-projects them (:func:`pixelnn.compose.back_project`: every output's area downsampling then
equals the 12x12 input exactly) and compares both sets against the real photo: LPIPS of a seeded random output
(Rand-1, the same draw for both), of the best output (Oracle) and of all outputs (mean), PSNR to the photo,
and the faithfulness PSNR to the input. Paired differences are printed with their standard errors.

    PYTHONPATH=src python benchmarks/back_projection.py --model runs/model-shoes-sr --data runs/shoes-sr --inputs 50
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
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from pixelnn.compose import back_project
    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluate import select_inputs
    from pixelnn.evaluation.image_metrics import psnr
    from pixelnn.evaluation.lpips import lpips_distance
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.tasks import area_downsample

    pipe = PixelNNPipeline.from_model_dir(args.model, device="cpu")
    if pipe.task.name != "superres":
        raise SystemExit("back-projection is for superres models")
    factor = pipe.task.factor
    split = Dataset(args.data).split(args.split)
    rows: dict[str, list[float]] = {k: [] for k in ("rand", "oracle", "mean", "psnr", "faith", "moved")}
    both = {"plain": {k: [] for k in rows}, "back-projected": {k: [] for k in rows}}
    for pos in select_inputs(len(split), args.inputs, args.seed):
        x, photo = np.asarray(split.inputs[int(pos)]), np.asarray(split.photos[int(pos)])
        r = pipe(x, order="grid")
        k = int(np.random.default_rng([args.seed, int(pos)]).integers(len(r.outputs)))
        bp = back_project(r.outputs, x, factor)
        for name, outs in (("plain", r.outputs), ("back-projected", bp)):
            lp = lpips_distance(np.ascontiguousarray(outs), np.repeat(photo[None], len(outs), 0))
            t = both[name]
            t["rand"].append(float(lp[k]))
            t["oracle"].append(float(lp.min()))
            t["mean"].append(float(lp.mean()))
            t["psnr"].append(float(np.mean(psnr(outs, np.repeat(photo[None], len(outs), 0)))))
            t["faith"].append(float(np.mean(np.minimum(psnr(area_downsample(outs, factor),
                                                            np.repeat(x[None], len(outs), 0)), 100.0))))
            t["moved"].append(float(np.abs(outs.astype(int) - r.outputs.astype(int)).mean()))
    n = len(both["plain"]["rand"])
    print(f"{n} {args.split} inputs, 72 outputs each ({args.model})")
    print("| | Rand-1 LPIPS | Oracle LPIPS | mean LPIPS | PSNR to the photo | PSNR to the input | mean change |")
    print("|---|---|---|---|---|---|---|")
    for name, t in both.items():
        print(f"| {name} | {np.mean(t['rand']):.4f} | {np.mean(t['oracle']):.4f} | {np.mean(t['mean']):.4f} | "
              f"{np.mean(t['psnr']):.2f} dB | {np.mean(t['faith']):.2f} dB | {np.mean(t['moved']):.2f} |")
    for key in ("rand", "oracle", "mean", "psnr"):
        d = np.array(both["back-projected"][key]) - np.array(both["plain"][key])
        print(f"back-projected - plain, {key}: {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(n):.4f} "
              f"(better in {(d < 0).sum() if key != 'psnr' else (d > 0).sum()} of {n})")


if __name__ == "__main__":
    main()
