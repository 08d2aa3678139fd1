"""Stage-2 quality on held-out photos: LPIPS of stage 1, a random output and the best output, and diversity.

For each of ``--n`` evenly spaced pairs of a prepared dataset's split (their inputs were derived
from the photos with the model's task, exactly as ``synthesize --from-photo`` does), run the
pipeline with one ``SynthesisOptions`` (``--mode``, ``--color``; the mode's defaults otherwise) and
measure against the photo:

- seconds per input (model loaded);
- LPIPS v0.1 (AlexNet) of f(x), of a random output (seeded) and of the best of the outputs;
- diversity: the mean pairwise LPIPS among the outputs.

Usage::

    python benchmarks/stage2_eval.py --model runs/model-shoes-sr --data runs/shoes-sr --n 100 \
        [--descriptor hypercolumn|regressor] [--pca-dims 64] [--mode matched] [--color rgb] [--out DIR]

Prints one table row and writes ``DIR/metrics.json``, an example grid and a correspondence map.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pixelnn.data.dataset import Dataset, image_grid
from pixelnn.evaluation.lpips import lpips_distance, mean_pairwise_lpips
from pixelnn.io import save_image, write_json
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline, save_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--descriptor", default="hypercolumn")
    ap.add_argument("--pca-dims", type=int, default=64, help="0 = full descriptor")
    ap.add_argument("--mode", default="matched")
    ap.add_argument("--color", default="rgb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    pipe = PixelNNPipeline.from_model_dir(args.model, descriptor=args.descriptor,
                                          pca_dims=None if args.pca_dims == 0 else args.pca_dims)
    options = pipe.check_options(SynthesisOptions(mode=args.mode, color=args.color))
    split = Dataset(args.data).split(args.split)
    pick = np.unique(np.linspace(0, len(split) - 1, min(args.n, len(split))).astype(int))
    rng = np.random.default_rng(args.seed)
    rows = []
    pipe(np.asarray(split.inputs[pick[0]]), options)  # warm-up (lazy weights)
    example = None
    for n, i in enumerate(tqdm(pick, desc="stage 2", unit="input")):
        x, photo = np.asarray(split.inputs[i]), np.asarray(split.photos[i])
        t0 = time.perf_counter()
        result = pipe(x, options)
        seconds = time.perf_counter() - t0
        outs = result.outputs
        d_out = lpips_distance(outs, np.repeat(photo[None], len(outs), 0))
        d_s1 = float(lpips_distance(result.stage1[None], photo[None])[0])
        r = int(rng.integers(len(outs)))
        rows.append({"index": int(i), "seconds": seconds, "lpips_stage1": d_s1, "lpips_random": float(d_out[r]),
                     "lpips_best": float(d_out.min()), "best_output": int(d_out.argmin()),
                     "diversity": mean_pairwise_lpips(outs), **{f"t_{k}": v for k, v in result.timings.items()}})
        if n == 0:
            example = (result, photo)
    keys = ["seconds", "lpips_stage1", "lpips_random", "lpips_best", "diversity"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    summary.update({f"t_{k}": float(np.mean([r[f"t_{k}"] for r in rows])) for k in example[0].timings})
    config = {"model": args.model, "data": args.data, "split": args.split, "n": len(rows),
              "descriptor": args.descriptor, "pca_dims": args.pca_dims, "mode": args.mode, "color": args.color,
              "threads": torch.get_num_threads(), "outputs_per_input": len(example[0].outputs),
              "options": options.to_dict()}
    print(" | ".join(f"{k}={v}" for k, v in config.items() if k in ("descriptor", "pca_dims", "mode", "color", "n")))
    print("seconds/input  LPIPS stage-1  LPIPS random  LPIPS best  diversity")
    print(f"{summary['seconds']:13.2f}  {summary['lpips_stage1']:13.4f}  {summary['lpips_random']:12.4f}  "
          f"{summary['lpips_best']:10.4f}  {summary['diversity']:9.4f}")
    if args.out:
        out = Path(args.out)
        write_json(out / "metrics.json", {"config": config, "summary": summary, "rows": rows})
        result, photo = example
        save_result(result, out / "example", pipe.library, photo=photo)
        best = rows[0]["best_output"]
        # rows: the input; then f(x), outputs 1, 11, 41, 61, 72, the best output, the photo
        strip = np.concatenate([result.stage1[None], result.outputs[[0, 10, 40, 60, 71]], result.outputs[best][None],
                                photo[None]])
        save_image(out / "example_row.png", image_grid([result.input[None], strip]))


if __name__ == "__main__":
    main()
