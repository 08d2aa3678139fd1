"""Side-by-side figure of the composition defaults (issue 16, part 3): eq. 3, coherent, and the new default.

For ``--inputs`` evenly spaced val inputs, one row each: the input, f(x), the held-out photo, then per
configuration its **first output** (best first, what a user sees first) and its output at grid position
``--output`` (the same exemplar set and window in each configuration), and under the row the same images
enlarged 3x around their centre. Prints every configuration's mean seam visibility over all outputs.

- ``eq. 3``: ``SynthesisOptions(mode="matched", back_projection=False, input_weight=0)``, the paper;
- ``coherent``: ``mode="coherent"`` with the same retrieval, no back-projection and the mode's own chroma weight
  (0.6; coherent edges now default to 0.8);
- ``default``: ``SynthesisOptions()``, everything at its default.

Usage::

    python benchmarks/default_figure.py --model runs/model-shoes-edges --data runs/shoes-edges --inputs 4 \\
        --figure docs/images/defaults-shoes-edges.png
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
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--output", type=int, default=66, help="grid position shown beside the first (0-based; 66: "
                                                           "five exemplars, 7x7 window)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from PIL import Image

    from pixelnn.data.dataset import Dataset, image_grid, resize_nearest
    from pixelnn.evaluation.coherence import seam_visibility
    from pixelnn.modes import get_mode
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline, grid_order

    configs = {"eq. 3": SynthesisOptions(mode="matched", back_projection=False, input_weight=0.0),
               "coherent": SynthesisOptions(mode="coherent", back_projection=False, input_weight=0.0,
                                            chroma_weight=get_mode("coherent").defaults["chroma_weight"]),
               "default": SynthesisOptions()}
    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    split = Dataset(args.data).split("val")
    picks = np.linspace(0, len(split) - 1, args.inputs).round().astype(int)
    vis: dict[str, list[float]] = {c: [] for c in configs}
    rows = []

    def zoom(im: np.ndarray) -> np.ndarray:
        s = im.shape[0]
        return np.asarray(Image.fromarray(im[s // 3:2 * s // 3, s // 3:2 * s // 3]).resize((s, s), Image.NEAREST))

    for i in picks:
        x, photo = np.asarray(split.inputs[i]), np.asarray(split.photos[i])
        s = photo.shape[0]
        shown = x if x.shape[-1] == 3 else np.repeat(x, 3, axis=-1)
        shown = resize_nearest(shown[None], s)[0] if shown.shape[0] != s else shown
        row = [shown, pipe.stage1(pipe.check_input(x)), photo]
        for name, opts in configs.items():
            r = pipe(x, opts)
            vis[name].append(float(np.nanmean(seam_visibility(r.outputs, r.exemplar, r.source_y, r.source_x))))
            g = grid_order(r)
            row += [r.outputs[0], g.outputs[min(args.output, len(g.outputs) - 1)]]
        rows += [np.stack(row), np.stack([zoom(im) for im in row])]
    for name, v in vis.items():
        print(f"{name:9s}: seam visibility {np.mean(v):.3f} (mean over {len(v)} inputs, all outputs); options "
              f"{pipe.check_options(configs[name]).to_dict() if name == 'default' else ''}")
    Image.fromarray(image_grid(rows)).save(args.figure, optimize=True)
    print(f"figure: {args.figure}: per input: input, f(x), photo, then for {', '.join(configs)}: the first output "
          f"and grid output {args.output + 1}; below, each enlarged 3x around its centre")


if __name__ == "__main__":
    main()
