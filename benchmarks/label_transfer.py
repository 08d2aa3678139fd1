"""Label transfer (issue 14, part 4): IoU of masks transferred through the correspondences against the
mask of the input's own photo, beside the same rule applied to stage 1. ``--kind foreground`` (shoes on
white, the default) or ``--kind face`` (the face mesh's mask, on aligned faces).

For every input (a seeded subset of a split, :func:`pixelnn.evaluate.select_inputs`): synthesize the 72
outputs, transfer the library's foreground labels (``pixelnn labels foreground``, built into
``OUT/labels`` unless ``--labels`` names a folder) through the correspondences
(:func:`pixelnn.transfer.transfer_result`), and score against ``foreground_masks(photo)``:

- **consensus**: the per-pixel majority over the 72 outputs;
- **Rand-1**: one output's transferred labels, drawn with ``default_rng([seed, position])``;
- **mean output** and **best output** (oracle) over the 72;
- **stage 1 thresholded** (the baseline): ``foreground_masks(f(x))``, the same rule and threshold as the
  labels; also at the best threshold of a sweep (tuned on these same inputs, so optimistic);
- **Rand-1 output thresholded**: the same rule on the synthesized image itself;
- **top neighbour's mask**: the rank-1 exemplar's label as it is, without correspondences.

Also the consensus's agreement: share of unanimous pixels and the error rate (vs the photo's mask) of
unanimous and of contested pixels. ``--save-dirs N`` writes the first N results with
:func:`pixelnn.pipeline.save_result` and runs ``pixelnn transfer`` on them, checking that the files give
the same consensus as the in-memory path. ``--figure`` writes rows of [photo | stage 1 | Rand-1 output |
its transferred labels | consensus | agreement | photo's mask] for the first ``--figure-inputs`` inputs.

Usage::

    nice -n 19 python benchmarks/label_transfer.py --model runs/model-shoes-sr --data runs/shoes-sr \
        --split val --num-inputs 100 --threads 1 --out /tmp/transfer-runs/bench \
        [--figure docs/images/label-transfer-shoes.png]

Nothing is written into the model's folder (no pixel cache: the neighbours' descriptors are computed per
query, which gives the same outputs).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SWEEP = (200, 220, 230, 240, 245, 250, 253)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--num-inputs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", default=None, help="label folder (default: built into OUT/labels)")
    ap.add_argument("--kind", choices=("foreground", "face"), default="foreground",
                    help="the label source (`pixelnn labels KIND`) and the same rule on the photo as the truth: "
                         "foreground (shoes on white) or face (the face mesh's mask on aligned faces)")
    ap.add_argument("--threshold", type=int, default=240, help="near-white threshold of every mask (default 240)")
    ap.add_argument("--out", required=True, help="work folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--save-dirs", type=int, default=2)
    ap.add_argument("--figure", default=None)
    ap.add_argument("--figure-inputs", type=int, default=4)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from pixelnn.data.dataset import Dataset, image_grid
    from pixelnn.evaluate import select_inputs
    from pixelnn.labels import LabelDir, face_masks, foreground_masks, labels_command
    from pixelnn.pipeline import PixelNNPipeline, save_result
    from pixelnn.transfer import (Correspondences, iou, overlay, read_transfer, transfer_command,
                                  transfer_result)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels_path = Path(args.labels) if args.labels else out / "labels"
    if not labels_path.exists():
        t = time.perf_counter()
        print(labels_command(args.kind, args.model, labels_path, threshold=args.threshold, progress=False).summary())
        print(f"labels built in {time.perf_counter() - t:.1f} s")
    label_dir = LabelDir(labels_path)

    split = Dataset(args.data).split(args.split)
    positions = select_inputs(len(split), args.num_inputs, args.seed)
    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    print(f"{len(positions)} {args.split} inputs, 72 outputs each, {args.threads} thread(s)")

    scores: dict[str, list[float]] = {k: [] for k in ("consensus", "rand1", "mean_output", "best_output",
                                                      "stage1", "rand1_output_thresholded", "top_neighbour")}
    sweep = {t: [] for t in SWEEP}
    agree_stats = {"unanimous": 0, "unanimous_wrong": 0, "contested": 0, "contested_wrong": 0}
    mean_agreement: list[float] = []
    synth_s: list[float] = []
    transfer_s: list[float] = []
    fig_rows = []
    checked = 0
    fg = 1  # the foreground (face) class id of `pixelnn labels foreground|face`

    def mask_of(image: np.ndarray, threshold: int = args.threshold) -> np.ndarray:
        """The label rule on one image (S, S, 3) -> (S, S) bool (a face where none is found: all False)."""
        return foreground_masks(image, threshold) if args.kind == "foreground" else face_masks(image[None])[0][0]

    for b in range(0, len(positions), args.batch_size):
        pos = positions[b:b + args.batch_size]
        xs = np.asarray(split.inputs[pos])
        t = time.perf_counter()
        results = pipe.batch(xs)
        synth_s.append((time.perf_counter() - t) / len(pos))
        for p, res in zip(pos, results):
            photo = np.asarray(split.photos[p])
            truth = mask_of(photo)
            t = time.perf_counter()
            corr = Correspondences.from_result(res)
            tr = transfer_result(corr, label_dir)
            transfer_s.append(time.perf_counter() - t)
            masks = tr.labels == fg  # (O, S, S)
            cons = tr.consensus == fg
            r = int(np.random.default_rng([args.seed, int(p)]).integers(len(masks)))
            per_output = [iou(m, truth) for m in masks]
            scores["consensus"].append(iou(cons, truth))
            scores["rand1"].append(per_output[r])
            scores["mean_output"].append(float(np.mean(per_output)))
            scores["best_output"].append(float(np.max(per_output)))
            scores["stage1"].append(iou(mask_of(res.stage1), truth))
            scores["rand1_output_thresholded"].append(iou(mask_of(res.outputs[r]), truth))
            top, _ = label_dir.load([res.neighbour_ids[0]], photo.shape[0])
            scores["top_neighbour"].append(iou(top[0] == fg, truth))
            for th in SWEEP if args.kind == "foreground" else ():
                sweep[th].append(iou(mask_of(res.stage1, th), truth))
            unanimous = tr.agreement == 1
            wrong = cons != truth
            agree_stats["unanimous"] += int(unanimous.sum())
            agree_stats["unanimous_wrong"] += int((unanimous & wrong).sum())
            agree_stats["contested"] += int((~unanimous).sum())
            agree_stats["contested_wrong"] += int((~unanimous & wrong).sum())
            mean_agreement.append(float(tr.agreement.mean()))
            if checked < args.save_dirs:  # the files route gives the same consensus
                d = out / "results" / f"{args.split}_{int(p):04d}"
                save_result(res, d, pipe.library, save_correspondence_maps=False, photo=photo)
                transfer_command([d], labels_path, overwrite=True)
                disk = read_transfer(d / "labels")
                assert np.array_equal(disk["consensus"], tr.consensus) and np.array_equal(disk["labels"], tr.labels)
                checked += 1
            if len(fig_rows) < args.figure_inputs:
                lut = tr.classes.color_table()
                agree_rgb = np.repeat(np.rint(tr.agreement * 255).astype(np.uint8)[..., None], 3, axis=2)
                fig_rows.append(np.stack([
                    photo, res.stage1, res.outputs[r], overlay(res.outputs[r], tr.labels[r], lut),
                    overlay(res.stage1, tr.consensus, lut), agree_rgb,
                    overlay(photo, truth.astype(np.int64), lut)]))
        done = b + len(pos)
        print(f"  {done}/{len(positions)} inputs; consensus IoU so far {np.mean(scores['consensus']):.3f}", flush=True)

    def summary(v: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4),
                "min": round(float(np.min(v)), 4)}

    metrics = {
        "kind": args.kind, "inputs": len(positions), "split": args.split, "threshold": args.threshold, "seed": args.seed,
        "iou": {k: summary(v) for k, v in scores.items()},
        "stage1_threshold_sweep": {str(t): round(float(np.mean(v)), 4) for t, v in sweep.items() if v},
        "mean_agreement": round(float(np.mean(mean_agreement)), 4),
        "unanimous_share": round(agree_stats["unanimous"] / (agree_stats["unanimous"] + agree_stats["contested"]), 4),
        "error_unanimous": round(agree_stats["unanimous_wrong"] / max(agree_stats["unanimous"], 1), 4),
        "error_contested": round(agree_stats["contested_wrong"] / max(agree_stats["contested"], 1), 4),
        "consensus_beats_stage1": int(sum(c > s for c, s in zip(scores["consensus"], scores["stage1"]))),
        "seconds_per_input_synthesis": round(statistics.median(synth_s), 3),
        "seconds_per_input_transfer": round(statistics.median(transfer_s), 4),
        "files_route_checked": checked,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    names = {"consensus": "transferred, consensus of 72", "rand1": "transferred, Rand-1 output",
             "mean_output": "transferred, mean over the 72 outputs", "best_output": "transferred, best of 72 (oracle)",
             "stage1": (f"stage 1 thresholded (baseline, white >= {args.threshold})" if args.kind == "foreground"
                        else "face mesh on stage 1 (baseline)"),
             "rand1_output_thresholded": f"Rand-1 output image, {'thresholded' if args.kind == 'foreground' else 'face mesh'}", "top_neighbour": "rank-1 neighbour's mask as is"}
    print(f"\n{args.kind} IoU against the photo's own mask, {len(positions)} {args.split} inputs (mean / median / min):")
    for k, v in metrics["iou"].items():
        print(f"  {names[k]:<48} {v['mean']:.3f} / {v['median']:.3f} / {v['min']:.3f}")
    if sweep and args.kind == "foreground":
        best = max(metrics["stage1_threshold_sweep"].items(), key=lambda kv: kv[1])
        print(f"  stage 1 threshold sweep (mean IoU): {metrics['stage1_threshold_sweep']}; best {best[0]}: {best[1]:.3f}")
    print(f"consensus better than stage 1 on {metrics['consensus_beats_stage1']} of {len(positions)} inputs")
    print(f"agreement: mean {metrics['mean_agreement']:.3f}; unanimous pixels {100 * metrics['unanimous_share']:.1f}% "
          f"(error {100 * metrics['error_unanimous']:.2f}%), contested pixels error "
          f"{100 * metrics['error_contested']:.1f}%")
    print(f"time per input: synthesis {metrics['seconds_per_input_synthesis']:.2f} s, transfer "
          f"{1000 * metrics['seconds_per_input_transfer']:.0f} ms; files route checked on {checked} results")
    if args.figure and fig_rows:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(fig_rows)).save(args.figure, optimize=True)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
