"""``pixelnn demo``: the whole pipeline on a small dataset, ending in an HTML page.

With no data it builds a photo collection from faces and objects in the photographs that the
installed packages bundle (scikit-image, matplotlib and, with the ``web`` extra, Gradio): an
astronaut, Grace Hopper, a cat, a lion, two cheetahs, a coffee cup, a motorcycle. Each photo
gives many *views* (the face or object cropped at a jittered position, scale and angle, sometimes
mirrored, with slightly varied exposure), so nothing is downloaded. The views are labelled by
folder (``level1`` = kind: people, cats, objects; ``level2`` = the photo), which the page uses to
show label control. With ``--data PATH`` (a zip or folder of photos) the demo uses those instead.

Steps (each a function): 1. prepare the dataset, 2. train stage 1, 3. build the exemplar library,
4. synthesize, 5. write the page. :func:`run_demo` returns a :class:`DemoResult` with the page, the
wall time of every step and the stage-1 PSNR beside bicubic's.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pixelnn.config import TaskConfig, TrainConfig
from pixelnn.data.dataset import Dataset, image_grid
from pixelnn.evaluation.image_metrics import bicubic_upsample, psnr
from pixelnn.errors import PixelNNError
from pixelnn.io import save_image
from pixelnn.report import Section, write_page

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledPhoto:
    """A photograph shipped inside an installed package, and the square around its face or object."""

    name: str  # the label level2 of its views
    kind: str  # the label level1: people, cats or objects
    package: str  # the import name of the package that bundles it
    path: str  # the file inside that package
    box: tuple[int, int, int]  # centre x, centre y and side of the square, in source pixels


#: Faces and objects in photos the installed packages bundle (Gradio's only with the ``web`` extra).
BUNDLED_PHOTOS = (
    BundledPhoto("astronaut", "people", "skimage", "data/astronaut.png", (224, 112, 170)),
    BundledPhoto("grace_hopper", "people", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (258, 228, 250)),
    BundledPhoto("chelsea", "cats", "skimage", "data/chelsea.png", (229, 150, 290)),
    BundledPhoto("lion", "cats", "gradio", "media_assets/images/lion.jpg", (116, 74, 110)),
    BundledPhoto("cheetah", "cats", "gradio", "media_assets/images/cheetah1.jpg", (128, 110, 200)),
    BundledPhoto("cheetah_cub", "cats", "gradio", "test_data/cheetah2.jpg", (372, 340, 500)),
    BundledPhoto("coffee", "objects", "skimage", "data/coffee.png", (300, 187, 360)),
    BundledPhoto("motorcycle", "objects", "skimage", "data/motorcycle_left.png", (382, 262, 470)),
)

#: The demo's task: the paper's 12x12 -> 96x96 super-resolution.
DEMO_TASK = TaskConfig(name="superres", size=96, factor=8)
#: Stage-1 settings that make the most of a 2-minute budget on a CPU: small batches, many steps.
DEMO_BATCH_SIZE = 8


def _package_file(package: str, path: str) -> Path | None:
    """The file ``path`` inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        f = Path(root) / path
        if f.is_file():
            return f
    return None


def bundled_photos() -> list[tuple[BundledPhoto, np.ndarray]]:
    """The bundled photos that the installed packages have, each as an (H, W, 3) uint8 array."""
    found = []
    for photo in BUNDLED_PHOTOS:
        f = _package_file(photo.package, photo.path)
        if f is None:
            log.debug("demo photo %s: %s does not ship %s", photo.name, photo.package, photo.path)
            continue
        try:
            with Image.open(f) as im:
                found.append((photo, np.asarray(im.convert("RGB"))))
        except OSError as e:
            log.debug("demo photo %s: %s", photo.name, e)
    return found


def photo_view(image: np.ndarray, box: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered view (size, size, 3) of the square ``box`` of ``image`` (H, W, 3).

    The square moves by up to 8% of its side, scales by 0.85-1.15, turns by up to 8 degrees, is
    mirrored half the time and gets +-8% brightness and contrast; it is kept inside the photo.
    """
    h, w = image.shape[:2]
    cx, cy, side = box
    side = side * rng.uniform(0.85, 1.15)
    angle = rng.uniform(-8.0, 8.0)
    cx, cy = cx + rng.uniform(-0.08, 0.08) * side, cy + rng.uniform(-0.08, 0.08) * side
    # the reach of the view's centre, per unit of side: the turned square's half extent plus the resampling
    # filters' (Lanczos: 3 output pixels), and 2 pixels more
    per_side = (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle)))) / 2 + 4 / size
    side = min(side, (min(h, w) / 2 - 2) / per_side)  # too big for the photo: shrink it
    reach = side * per_side + 2
    cx, cy = float(np.clip(cx, reach, w - reach)), float(np.clip(cy, reach, h - reach))
    x0, y0 = max(0, int(np.floor(cx - reach))), max(0, int(np.floor(cy - reach)))
    x1, y1 = min(w, int(np.ceil(cx + reach))), min(h, int(np.ceil(cy + reach)))
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    region = region.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx - x0, cy - y0))
    left, top = cx - x0 - side / 2, cy - y0 - side / 2
    view = region.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
    out = np.asarray(view, dtype=np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.92, 1.08) + mean * rng.uniform(0.92, 1.08)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def bundled_view_folder(out_dir: Path, views_per_photo: int = 110, size: int = 96, seed: int = 0) -> Path:
    """Write ``views_per_photo`` jittered views of each bundled photo's face or object as JPEGs into
    ``out_dir/<kind>/<name>/view_NNN.jpg`` (folders become the labels ``level1`` and ``level2``)."""
    photos = bundled_photos()
    if len(photos) < 2:
        raise PixelNNError("the installed packages bundle fewer than 2 of the demo's photos; "
                           "give your own with pixelnn demo --data PHOTOS")
    rng = np.random.default_rng(seed)
    for photo, image in photos:
        folder = out_dir / photo.kind / photo.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(views_per_photo):
            Image.fromarray(photo_view(image, photo.box, size, rng)).save(folder / f"view_{i:03d}.jpg", quality=95)
    return out_dir


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the page, each step's wall time (s) and stage 1 beside bicubic."""

    page: Path
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    stage1_psnr: float = float("nan")  # on the test inputs the page shows (dB)
    bicubic_psnr: float = float("nan")
    train_steps: int = 0


def next_commands(out_dir: str | Path = "pixelnn-demo") -> list[tuple[str, str]]:
    """The commands that do what the demo did on one's own data: ``(what, command)`` pairs."""
    return [
        ("a folder of photos (12x12 -> 96x96 super-resolution)",
         "pixelnn prepare ~/my-photos --out my-data --task superres"),
        ("... or a zip of photos, as edge maps -> photos (HED edges)",
         "pixelnn prepare photos.zip --out my-data --task edges"),
        ("... or a pix2pix dataset (A|B images, train/val/test folders)",
         "pixelnn prepare edges2handbags.zip --out my-data --task paired --direction BtoA"),
        ("train stage 1 (longer is better: 30 minutes and more)", "pixelnn train my-data --out my-model --minutes 30"),
        ("build the exemplar library", "pixelnn index my-data --model my-model"),
        ("72 outputs per input, with correspondences", "pixelnn synthesize my-input.png --model my-model --out results"),
        ("explore in the browser, pixel by pixel", "pixelnn serve --model my-model"),
        ("measure against the held-out photos", "pixelnn evaluate my-model --out report --split test"),
    ]


# ------------------------------------------------------------------------------------------- the steps
def _prepare(out_dir: Path, data: str | None, limit: int, progress: bool):
    from pixelnn.data.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        source = data if data else str(bundled_view_folder(Path(tmp) / "photos", size=DEMO_TASK.size))
        log.info("1/5 preparing a %s dataset from %s", DEMO_TASK.name, data or "views of the bundled photos")
        return prepare_dataset(source, out_dir / "data", DEMO_TASK, fit="crop" if not data else "auto", limit=limit,
                               overwrite=True, progress=progress)


def _train(out_dir: Path, minutes: float, progress: bool):
    from pixelnn.training import train

    log.info("2/5 training the stage-1 regressor for %.1f min", minutes)
    config = TrainConfig(minutes=minutes, batch_size=DEMO_BATCH_SIZE, val_every=50, sample_every=100)
    return train(out_dir / "data", out_dir / "model", config, resume=False, progress=progress)


def _library(out_dir: Path, progress: bool):
    from pixelnn.models.regressor import Regressor
    from pixelnn.pipeline import PixelNNPipeline, load_pixel_descriptor
    from pixelnn.zarr_store import build_store

    log.info("3/5 building the exemplar library")
    model = Regressor.load(out_dir / "model" / "regressor.safetensors")
    library = build_store(None, out_dir / "model", [out_dir / "data"], progress=progress, overwrite=True)
    return library, PixelNNPipeline(model, library, DEMO_TASK, load_pixel_descriptor(library, regressor=model,
                                                                                     fit_images=64))


def _test_inputs(split, n: int = 3) -> list[int]:
    """``n`` test positions: the first of each kind (level1; people, cats, objects first), then the next ones in
    split order (without labels: the first ``n``)."""
    order = list(dict.fromkeys(p.kind for p in BUNDLED_PHOTOS))
    first: dict[str, int] = {}
    for i, r in enumerate(split.records):
        first.setdefault(r.get("labels", {}).get("level1"), i)
    picked = [first[k] for k in sorted(first, key=lambda k: order.index(k) if k in order else len(order))
              if k is not None]
    return (picked + [i for i in range(len(split)) if i not in picked])[:n]


def _steer(pipe, train, split, i: int) -> list[tuple[str, np.ndarray]] | None:
    """Input ``i``'s five best outputs copied only from each of (up to) two other photos (level2), of its own
    kind (level1) when it has others; ``None`` without such labels."""
    labels = split.records[i].get("labels", {})
    photos = {}
    for r in train.records:
        lab = r.get("labels", {})
        if "level2" in lab and lab["level2"] != labels.get("level2"):
            photos.setdefault(lab["level2"], lab.get("level1"))
    same = sorted(p for p, kind in photos.items() if kind == labels.get("level1"))
    chosen = (same + sorted(p for p in photos if p not in same))[:2]
    if not chosen:
        return None
    return [(name, pipe(np.asarray(split.inputs[i]), where={"level2": [name]}).outputs[:5]) for name in chosen]


def run_demo(out_dir: str | Path, data: str | None = None, minutes: float = 2.0, progress: bool = True,
             limit: int = 3000) -> DemoResult:
    """Prepare a superres dataset, train stage 1 for ``minutes``, build the exemplar library,
    synthesize 72 outputs for three test inputs (and the first again, copying only from chosen photos),
    and write ``out_dir/index.html``; see :class:`DemoResult`."""
    from pixelnn.models.regressor import predict
    from pixelnn.pipeline import save_result

    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def lap(name: str) -> None:
        steps[name] = time.perf_counter() - t0 - sum(steps.values())

    report = _prepare(out_dir, data, limit, progress)
    log.info("%s", report.summary())
    lap("prepare")
    result = _train(out_dir, minutes, progress)
    lap("train")
    library, pipe = _library(out_dir, progress)
    lap("library")

    log.info("4/5 synthesizing")
    ds = Dataset(out_dir / "data")
    split = ds.split("test") if ds.manifest["counts"]["test"] else ds.split("val")
    shown = _test_inputs(split, 3)
    inputs, photos = np.asarray(split.inputs)[shown], np.asarray(split.photos)[shown]  # (3, s, s, 3), (3, S, S, 3)
    stage1 = predict(pipe.regressor, inputs)  # (3, S, S, 3)
    bicubic = bicubic_upsample(inputs, DEMO_TASK.size)
    results = [pipe(x) for x in inputs]
    for i, r in enumerate(results):
        save_result(r, out_dir / "synthesis" / f"test_{i}", library, photo=photos[i])
    steered = _steer(pipe, ds.split("train"), split, shown[0]) if not data else None
    lap("synthesize")

    log.info("5/5 writing the results page")
    p_stage1, p_bicubic = float(psnr(stage1, photos).mean()), float(psnr(bicubic, photos).mean())
    page = _write_page(out_dir, data, report, result, library, inputs, bicubic, stage1, photos, results, steered,
                       (p_bicubic, p_stage1), time.perf_counter() - t0)
    lap("page")
    return DemoResult(page, time.perf_counter() - t0, steps, p_stage1, p_bicubic, result.steps)


def _write_page(out_dir: Path, data: str | None, report, result, library, inputs, bicubic, stage1, photos, results,
                steered, shown_psnr: tuple[float, float], seconds: float) -> Path:
    from pixelnn.pipeline import grid_order
    from pixelnn.visualize import correspondence_figure

    save_image(out_dir / "results.png", image_grid([inputs, bicubic, stage1, photos]))
    save_image(out_dir / "training_samples.png", np.asarray(Image.open(out_dir / "model" / "samples" / "latest.png")))
    save_image(out_dir / "stage2.png", image_grid([np.stack([r.stage1 for r in results])] +
                                                  [r.outputs[:5] for r in results] + [photos]))
    r0 = grid_order(results[0])
    ranks = np.vectorize({int(p): k for k, p in enumerate(r0.neighbours)}.__getitem__)(r0.exemplar)  # (O, S, S)
    o = len(r0.outputs) - 1  # the last grid cell: the most exemplars, the whole-image window
    save_image(out_dir / "correspondence.png", correspondence_figure(r0.outputs[o], ranks[o], r0.source_y[o],
                                                                     r0.source_x[o], r0.specs[o].ranks,
                                                                     library.take("photos", r0.neighbours),
                                                                     len(r0.neighbours)))
    figures_steer = []
    if steered:
        save_image(out_dir / "control.png", image_grid([results[0].outputs[:5]] + [rows for _, rows in steered]))
        names = " and then only from ".join(k for k, _ in steered)
        figures_steer = [("control.png", f"The first test input's five best outputs from any exemplar (top row), then "
                                         f"copying only from {names} (one row each, --where level2=...): the same "
                                         f"f(x) takes its detail from whichever exemplars it is allowed to copy.")]
    m = result.metrics
    b_psnr, s_psnr = shown_psnr  # bicubic's and f(x)'s on the inputs shown
    table = [["method", "PSNR (dB), val", "SSIM, val", "PSNR (dB), the 3 shown"],
             ["bicubic upsampling", f"{m['bicubic_psnr']:.2f}", f"{m['bicubic_ssim']:.4f}", f"{b_psnr:.2f}"],
             ["PixelNN stage 1 f(x)", f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", f"{s_psnr:.2f}"]]
    _plot_log(out_dir / "model" / "train_log.jsonl", out_dir / "loss.png")
    source = (data or "views of the faces and objects in photos bundled with scikit-image, matplotlib and Gradio "
              "(each photo cropped many times at a jittered position, scale and angle)")
    own = "" if data else (" The library holds other views of the same photos, so a test view's nearest exemplars "
                           "are often the same face seen slightly differently: that is what makes the copied detail "
                           "so close here. On your own data the exemplars are other photos of the same kind.")
    total = results[0].timings.get("total", float("nan"))
    sections = [
        Section("Data", [report.summary(), f"Source: {source}; task superres: {DEMO_TASK.input_size}x"
                         f"{DEMO_TASK.input_size} input -> {DEMO_TASK.size}x{DEMO_TASK.size} photo." + own]),
        Section("Stage 1 on held-out images",
                [f"Validation metrics over {m['n']} images after {result.steps} steps "
                 f"({result.seconds / 60:.1f} min, {result.images_per_second:.1f} images/s on this CPU)."],
                table, [("results.png", "Each column is a held-out test image; rows: the 12x12 input (enlarged), "
                                        "bicubic upsampling, the stage-1 regressor's smooth f(x), and the real photo.")]),
        Section("Stage 2: many outputs by copying exemplars' high frequencies",
                [f"Exemplar library: {len(library)} training pairs. Every output pixel is f(x) plus the high "
                 f"frequencies of the best-matching pixel of one of the nearest exemplars; "
                 f"{len(results[0].outputs)} outputs per input ({total:.1f} s each on this CPU), with their "
                 f"correspondences, are in synthesis/test_*/."],
                None, [("stage2.png", "The top row is f(x) of the three test inputs; each of the next three rows "
                                      "holds one input's five best-ranked outputs of 72, and the bottom row the "
                                      "real photos."),
                       ("correspondence.png", "Where each pixel of one output came from: the output, its "
                                              "exemplar map (colour = which exemplar) and source positions (shade "
                                              "= where in it), above the exemplars framed in their colours."),
                       *figures_steer]),
        Section("Training", [], None, [("loss.png", "Validation PSNR of f(x) during the stage-1 training run."),
                                       ("training_samples.png", "The last training samples, one per column: "
                                                                "the input, f(x) and the photo.")]),
        Section("Next: your own photos",
                [f"This demo took {seconds / 60:.1f} minutes. The same steps on your own data:"],
                [["to do this", "run"], *[[what, cmd] for what, cmd in next_commands(out_dir)]]),
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
