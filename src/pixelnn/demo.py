"""``pixelnn demo``: the whole pipeline on a small dataset, ending in an HTML page.

With no data it builds a photo collection from the images that scikit-image ships (random
crops of its colour photographs), so it runs on a fresh machine with nothing downloaded.
With ``--data PATH`` (a zip or folder of photos) it uses those instead.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from pixelnn.config import TaskConfig, TrainConfig
from pixelnn.data.dataset import Dataset, image_grid
from pixelnn.evaluation.image_metrics import bicubic_upsample, psnr, ssim
from pixelnn.io import save_image
from pixelnn.report import Section, write_page

log = logging.getLogger(__name__)

# Colour photographs bundled inside scikit-image (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "retina",
                  "immunohistochemistry", "hubble_deep_field", "colorwheel")


def bundled_photo_folder(out_dir: Path, n: int = 800, seed: int = 0) -> Path:
    """Write ``n`` random square crops of scikit-image's bundled colour photos as JPEGs into ``out_dir``."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            im = getattr(skimage.data, name)()
        except Exception as e:  # a photo that needs a download in this scikit-image version
            log.debug("skipping skimage.data.%s: %s", name, e)
            continue
        if im.ndim == 3 and im.shape[2] >= 3 and min(im.shape[:2]) >= 128:
            photos.append(np.ascontiguousarray(im[:, :, :3]))
    if not photos:
        raise RuntimeError("scikit-image ships no usable colour photos")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % len(photos)]
        h, w = im.shape[:2]
        side = int(rng.integers(96, min(h, w, 256) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = im[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(out_dir / f"crop_{i:04d}.jpg", quality=95)
    return out_dir


def run_demo(out_dir: str | Path, data: str | None = None, minutes: float = 2.0, progress: bool = True,
             limit: int = 3000) -> Path:
    """Prepare a superres dataset, train stage 1 for ``minutes``, build the exemplar library,
    synthesize 72 outputs for three test inputs, and write ``out_dir/index.html``.

    Returns the path of the HTML page.
    """
    from pixelnn.data.prepare import prepare_dataset
    from pixelnn.training import train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = TaskConfig(name="superres", size=96, factor=8)
    data_dir = out_dir / "data"
    with tempfile.TemporaryDirectory() as tmp:
        source = data if data else str(bundled_photo_folder(Path(tmp) / "photos"))
        log.info("1/4 preparing a %s dataset from %s", task.name, data or "scikit-image's bundled photos")
        report = prepare_dataset(source, data_dir, task, fit="crop" if not data else "auto", limit=limit,
                                 overwrite=True, progress=progress)
    log.info("%s", report.summary())
    log.info("2/4 training the stage-1 regressor for %.1f min", minutes)
    result = train(data_dir, out_dir / "model", TrainConfig(minutes=minutes, val_every=100, sample_every=200),
                   resume=False, progress=progress)

    log.info("3/4 building the exemplar library and synthesizing")
    from pixelnn.models.regressor import Regressor, predict
    from pixelnn.pipeline import PixelNNPipeline, grid_order, load_pixel_descriptor, save_result
    from pixelnn.visualize import correspondence_figure
    from pixelnn.zarr_store import build_store

    ds = Dataset(data_dir)
    split = ds.split("test") if ds.manifest["counts"]["test"] else ds.split("val")
    model = Regressor.load(out_dir / "model" / "regressor.safetensors")
    library = build_store(None, out_dir / "model", [data_dir], progress=progress, overwrite=True)
    pipe = PixelNNPipeline(model, library, task, load_pixel_descriptor(library, regressor=model, fit_images=64))
    n = min(8, len(split))
    inputs, photos = np.asarray(split.inputs[:n]), np.asarray(split.photos[:n])
    stage1 = predict(model, inputs)
    bicubic = bicubic_upsample(inputs, task.size)
    results = [pipe(x) for x in inputs[:3]]
    for i, r in enumerate(results):
        save_result(r, out_dir / "synthesis" / f"test_{i}", library, photo=photos[i])
    log.info("4/4 writing the results page")
    save_image(out_dir / "results.png", image_grid([inputs, bicubic, stage1, photos]))
    save_image(out_dir / "training_samples.png", np.asarray(Image.open(out_dir / "model" / "samples" / "latest.png")))
    grids = [grid_order(r) for r in results]  # the figures pick outputs by their place in the grid (sets x windows)
    save_image(out_dir / "stage2.png", image_grid([np.stack([r.stage1 for r in results])] +
                                                  [r.outputs[[0, 14, 44, 60, 71]] for r in grids] +
                                                  [photos[:len(results)]]))
    r0 = grids[0]
    ranks = np.vectorize({int(p): k for k, p in enumerate(r0.neighbours)}.__getitem__)(r0.exemplar)  # (O, S, S)
    o = 71  # 5 exemplars, whole-image window: the most compositional output
    save_image(out_dir / "correspondence.png", correspondence_figure(r0.outputs[o], ranks[o], r0.source_y[o],
                                                                     r0.source_x[o], r0.specs[o].ranks,
                                                                     library.take("photos", r0.neighbours),
                                                                     len(r0.neighbours)))
    m = result.metrics
    table = [["method", "PSNR (dB)", "SSIM"],
             ["bicubic upsampling", f"{m['bicubic_psnr']:.2f}", f"{m['bicubic_ssim']:.4f}"],
             ["PixelNN stage 1 f(x)", f"{m['psnr']:.2f}", f"{m['ssim']:.4f}"]]
    shown = [f"{psnr(stage1, photos).mean():.2f}", f"{ssim(stage1, photos).mean():.4f}"]
    _plot_log(out_dir / "model" / "train_log.jsonl", out_dir / "loss.png")
    sections = [
        Section("Data", [f"{report.summary()}",
                         f"Source: {data or 'random crops of the colour photos bundled with scikit-image'}; "
                         f"task {task.name}: {task.input_size}x{task.input_size} input -> {task.size}x{task.size} photo."]),
        Section("Stage 1 on held-out images",
                [f"Validation metrics over {m['n']} images after {result.steps} steps "
                 f"({result.seconds / 60:.1f} min, {result.images_per_second:.1f} images/s on this CPU). "
                 f"The 8 images below: PSNR {shown[0]} dB, SSIM {shown[1]}."],
                table, [("results.png", "rows: 12x12 input (shown enlarged), bicubic, stage-1 f(x), photo")]),
        Section("Stage 2: many outputs by copying exemplars' high frequencies",
                [f"Exemplar library: {len(library)} training pairs. Top row: f(x) of three test inputs; then one "
                 f"row per input with its outputs 1, 15, 45, 61 and 72 of {len(results[0].outputs)} (exemplar sets "
                 f"x windows); bottom row: the photos. Every output with its correspondences: synthesis/test_*/ "
                 f"({results[0].timings['total']:.1f} s per input)."],
                None, [("stage2.png", "top: f(x) per input; middle: five of the 72 outputs per input; bottom: the photos"),
                       ("correspondence.png", "top: an output (5 exemplars, whole-image window), where each pixel "
                        "came from (colour = exemplar, shade = source position), source positions; bottom: the "
                        "exemplars, framed in their colours")]),
        Section("Training", [], None, [("loss.png", "validation PSNR during training"),
                                       ("training_samples.png", "val samples: input, f(x), photo")]),
    ]
    return write_page(out_dir / "index.html", "PixelNN demo", sections,
                      "PixelNN turns an incomplete input (here a 12x12 thumbnail) into many photorealistic 96x96 "
                      "images. Stage 1, a fully convolutional regressor trained with L2 loss, gives a smooth f(x); "
                      "stage 2 copies the missing high frequencies from the nearest training exemplars, pixel by "
                      "pixel, so every output pixel names the exemplar and position it came from.")


def _plot_log(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixelnn.errors import PixelNNError
    from pixelnn.io import read_jsonl

    rows = [r for r in read_jsonl(log_path, "training log") if "val_psnr" in r]
    if not all(isinstance(r.get("step"), int) and isinstance(r["val_psnr"], (int, float)) for r in rows):
        raise PixelNNError(f"training log {log_path}: a line with a bad step or val_psnr")
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([r["step"] for r in rows], [r["val_psnr"] for r in rows], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("val PSNR (dB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from pixelnn.io import atomic_path

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
