"""Seam fusion (``seam_blend``, issue 16 part 3): a figure of the same outputs composed as eq. 3, eq. 3 with
seam fusion, coherent and coherent with seam fusion, with each one's seam visibility.

For the first ``--inputs`` val inputs, prints per configuration the mean seam visibility
(:func:`pixelnn.evaluation.coherence.seam_visibility`) over the 72 outputs, and writes ``--figure``: per
input, the photo, then output ``--output`` in each configuration, each also enlarged 3x around its centre.

Usage::

    python benchmarks/seam_fusion.py --model runs/model-shoes-sr --data runs/shoes-sr --inputs 3 \\
        --figure docs/images/seam-fusion-shoes.png
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

CONFIGS = (("matched", 0.0), ("matched", 4.0), ("coherent", 0.0), ("coherent", 4.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--output", type=int, default=66, help="which output (0-based; 66: a 5-exemplar set, 7x7 window)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from PIL import Image

    from pixelnn.data.dataset import Dataset, image_grid
    from pixelnn.evaluation.coherence import seam_visibility
    from pixelnn.pipeline import PixelNNPipeline

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    split = Dataset(args.data).split("val")
    rows = []
    vis: dict[tuple, list[float]] = {c: [] for c in CONFIGS}
    for i in range(min(args.inputs, len(split))):
        x, photo = np.asarray(split.inputs[i]), np.asarray(split.photos[i])
        s = photo.shape[0]
        row = [photo]
        zooms = [np.asarray(Image.fromarray(photo[s // 3:2 * s // 3, s // 3:2 * s // 3]).resize((s, s), Image.NEAREST))]
        for mode, blend in CONFIGS:
            r = pipe(x, mode=mode, seam_blend=blend, order="grid")  # output --output is the same spec in each
            vis[(mode, blend)].append(float(np.nanmean(seam_visibility(r.outputs, r.exemplar, r.source_y, r.source_x))))
            out = r.outputs[min(args.output, len(r.outputs) - 1)]
            row.append(out)
            zooms.append(np.asarray(Image.fromarray(out[s // 3:2 * s // 3, s // 3:2 * s // 3]).resize((s, s), Image.NEAREST)))
        rows += [np.stack(row), np.stack(zooms)]
    for (mode, blend), v in vis.items():
        print(f"{mode:9s} seam_blend {blend:.0f}: seam visibility {np.mean(v):.3f} (mean over {len(v)} inputs x 72 outputs)")
    if args.figure:
        Image.fromarray(image_grid(rows)).save(args.figure, optimize=True)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
