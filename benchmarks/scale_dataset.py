"""Build a large superres dataset (issue 12): every real photo of the shared zips plus seeded augmentations.

Usage::

    python benchmarks/scale_dataset.py [--data-dir /work/shared/data] [--out runs/scale/dataset-216k]
        [--total 216000] [--seed 0] [--workers 2] [--limit-per-source K] [--overwrite]

The result is an ordinary prepared dataset (:mod:`pixelnn.data.dataset`, format ``pixelnn-dataset``
version 1) with the task of ``runs/shoes-sr`` (superres, 96x96 photos, factor 8, 12x12x3 inputs), so the
``runs/model-shoes-sr`` regressor accepts it. Everything is in the train split; val and test are empty.

Sources (read in place with zipfile + PIL, never extracted), in this order:

========  ==============================  ===================================================
dataset   zip                             labels
========  ==============================  ===================================================
shoes     ut-zap50k-images-subset.zip     Category, Subcategory, Brand (folder names)
faces     celeba-10k.zip                  identity (identity_CelebA.txt)
cats      afhq-cat.zip                    none
handbags  edges2handbags-subset.zip       none; the photo is the LEFT half of each A|B pair
========  ==============================  ===================================================

Photos are decoded and fitted exactly as ``pixelnn prepare`` does (:func:`decode_image` with the same
JPEG draft size, :func:`fit_image` with the fit :func:`choose_fit` picks from the first 50 photos of the
source, max upscale 1.1), and the inputs come from :func:`pixelnn.tasks.derive_inputs`.

Row layout of ``train/``: rows ``0 .. R-1`` are the R real photos (sources in the order above, zip
members in sorted order), then the ``total - R`` augmentations, grouped by photo in the same order.
The augmentations are spread evenly: every photo gets ``(total - R) // R`` or one more. Augmentation
``j`` of a photo is one of the 7 non-empty combinations of {horizontal flip, random crop (80-95 % of
each side, resized back by the fit), colour jitter (brightness, contrast, saturation)}; the first 7
augmentations of a photo use distinct combinations, later ones always include a crop or a jitter.
All random numbers come from ``numpy.random.default_rng([seed, row of the real photo, j])``, so the
output is byte-identical for a seed (except the ``created`` time in dataset.json), whatever the
number of workers.

Records: ``id`` ``"<dataset>/<prepare's id>"`` for real photos and ``"<dataset>/<id>~aug<j>"`` for
augmentations (j from 1); ``source`` is the zip member path; ``labels`` hold ``dataset``, the source's
own labels and ``augmented`` (``"0"``/``"1"``).

The arrays are written chunk by chunk into memory-mapped ``.npy`` files (the whole dataset is never in
memory) inside a temporary folder next to ``--out`` that is renamed into place at the end;
``dataset.json`` is written last.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from pixelnn.config import TaskConfig
from pixelnn.data.dataset import FORMAT_NAME, FORMAT_VERSION, SPLITS, pair_grid
from pixelnn.data.images import (DEFAULT_MAX_PIXELS, UnusableImage, choose_fit, decode_image, fit_image,
                                 pil_limits, split_pair)
from pixelnn.data.prepare import AUTO_FIT_SAMPLES, DEFAULT_MAX_UPSCALE
from pixelnn.data.sources import DEFAULT_MAX_FILE_BYTES, open_source, plan_layout
from pixelnn.errors import PixelNNError
from pixelnn.io import atomic_dir, save_image
from pixelnn.tasks import derive_inputs

log = logging.getLogger("scale_dataset")

#: (dataset name, zip file name, photo is the left half of an A|B pair)
SOURCES = (
    ("shoes", "ut-zap50k-images-subset.zip", False),
    ("faces", "celeba-10k.zip", False),
    ("cats", "afhq-cat.zip", False),
    ("handbags", "edges2handbags-subset.zip", True),
)
DEFAULT_DATA_DIR = Path("/work/shared/data")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runs" / "scale" / "dataset-216k"
DEFAULT_TOTAL = 216_000
#: The task of runs/shoes-sr (and runs/model-shoes-sr): superres 96x96, factor 8 -> 12x12x3 inputs.
TASK = TaskConfig(name="superres", size=96, factor=8, edge_method="hed", hed_scale=2.0, direction="AtoB",
                  input_channels=3)
CHUNK = 256  # real photos per work chunk

# augmentation: the 7 non-empty subsets of {flip, crop, jitter}
COMBOS = (("flip",), ("crop",), ("jitter",), ("flip", "crop"), ("flip", "jitter"), ("crop", "jitter"),
          ("flip", "crop", "jitter"))
CROP_SCALE = (0.80, 0.95)
BRIGHTNESS = (0.80, 1.20)
CONTRAST = (0.80, 1.20)
SATURATION = (0.70, 1.30)


@dataclass
class Item:
    """One usable real photo."""

    dataset: str
    member: str            # zip member path
    item_id: str           # prepare's id (path without extension)
    labels: dict[str, str]
    fit: str
    src_index: int         # index into the opened sources


@dataclass
class SourceInfo:
    dataset: str
    zip_path: Path
    paired: bool
    fit: str = ""
    found: int = 0
    used: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    upscaled: int = 0
    augmented: int = 0
    label_keys: list[str] = field(default_factory=list)


def _load(src, member: str, paired: bool) -> Image.Image:
    """Decode one zip member as prepare does (-> RGB PIL image with info['original_size'])."""
    if src.file_size(member) > DEFAULT_MAX_FILE_BYTES:
        raise UnusableImage("too large", f"file larger than {DEFAULT_MAX_FILE_BYTES} bytes")
    try:
        data = src.read(member)
    except Exception as e:  # noqa: BLE001 - corrupt zip entry
        raise UnusableImage("corrupt", f"cannot read: {e}") from None
    im = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, draft_size=None if paired else 2 * TASK.size)
    if paired:
        im = split_pair(im)[0]  # the photo is the LEFT half
    return im


def _fit(im: Image.Image, fit: str, original_size: tuple[int, int]) -> np.ndarray:
    return fit_image(im, TASK.size, fit, max_upscale=DEFAULT_MAX_UPSCALE, original_size=original_size)


def _original_size(im: Image.Image) -> tuple[int, int]:
    return tuple(im.info.get("original_size", im.size))


def augment(im: Image.Image, fit: str, rng: np.random.Generator, ops: tuple[str, ...]) -> np.ndarray:
    """Apply ``ops`` (crop, flip, jitter, in that order) to a decoded photo and fit it to the task size."""
    orig = _original_size(im)
    out = im
    if "crop" in ops:
        w, h = out.size
        s = rng.uniform(*CROP_SCALE)
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        out = out.crop((x0, y0, x0 + cw, y0 + ch))
    if "flip" in ops:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if "jitter" in ops:
        b, c, s = rng.uniform(*BRIGHTNESS), rng.uniform(*CONTRAST), rng.uniform(*SATURATION)
        out = ImageEnhance.Brightness(out).enhance(b)
        out = ImageEnhance.Contrast(out).enhance(c)
        out = ImageEnhance.Color(out).enhance(s)
    # size check against the original photo (a crop is "resized back", not a too-small image)
    return _fit(out, fit, orig)


def aug_ops(rng: np.random.Generator, start: int, j: int) -> tuple[str, ...]:
    """Combination for augmentation j (1-based): distinct for j <= 7, then never a bare flip."""
    if j <= len(COMBOS):
        return COMBOS[(start + j - 1) % len(COMBOS)]
    return COMBOS[1 + int(rng.integers(0, len(COMBOS) - 1))]


def aug_counts(n_real: int, n_aug: int) -> np.ndarray:
    """Augmentations per real photo: n_aug spread evenly (floor or floor + 1 each)."""
    r = np.arange(n_real + 1, dtype=np.int64)
    cum = (r * n_aug) // n_real
    return np.diff(cum)


def _record(item: Item, aug: int | None) -> dict[str, Any]:
    labels = {"dataset": item.dataset, **item.labels, "augmented": "0" if aug is None else "1"}
    rid = f"{item.dataset}/{item.item_id}" + ("" if aug is None else f"~aug{aug}")
    return {"id": rid, "source": item.member, "labels": labels}


def build(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, out: str | os.PathLike = DEFAULT_OUT, *,
          total: int = DEFAULT_TOTAL, seed: int = 0, workers: int = 2, limit_per_source: int | None = None,
          overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build the dataset; returns the manifest written."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out)
    if out.exists() and not overwrite:
        raise PixelNNError(f"{out} already exists; pass --overwrite to replace it")
    if limit_per_source is not None and limit_per_source < 1:
        raise PixelNNError(f"limit per source must be at least 1, got {limit_per_source}")
    infos = [SourceInfo(name, data_dir / zname, paired) for name, zname, paired in SOURCES]
    for info in infos:
        if not info.zip_path.is_file():
            raise PixelNNError(f"missing source {info.zip_path}")
    srcs = [open_source(info.zip_path) for info in infos]
    try:
        with pil_limits(DEFAULT_MAX_PIXELS), ThreadPoolExecutor(max(1, workers)) as pool:
            # ---- plan: layouts, fits, usable photos (decoded once here) --------------------------
            items: list[Item] = []
            for k, (info, src) in enumerate(zip(infos, srcs)):
                layout = plan_layout(src)
                info.label_keys = list(layout.label_keys)
                info.found = len(src.images)
                members = src.images if limit_per_source is None else src.images[:limit_per_source]

                def load(m, src=src, info=info):
                    try:
                        return _load(src, m, info.paired)
                    except UnusableImage as e:
                        return e

                samples = []
                for res in pool.map(load, members[:8 * AUTO_FIT_SAMPLES]):
                    if not isinstance(res, UnusableImage):
                        samples.append(np.asarray(res))
                        if len(samples) >= AUTO_FIT_SAMPLES:
                            break
                info.fit = choose_fit(samples)
                log.info("%s: %d image files, fit %s", info.dataset, len(src.images), info.fit)
                for m in members:
                    item_id, _folder, labels = layout.items[m]
                    items.append(Item(info.dataset, m, item_id, dict(labels), info.fit, k))

            n_listed = len(items)
            if total < n_listed:
                raise PixelNNError(f"--total {total} is below the {n_listed} real photos; "
                                   f"raise it or pass --limit-per-source")
            rows_photo = (TASK.size, TASK.size, 3)
            rows_input = (TASK.input_size, TASK.input_size, TASK.input_channels)

            def real(item: Item):
                try:
                    im = _load(srcs[item.src_index], item.member, infos[item.src_index].paired)
                    orig = _original_size(im)
                    side = max(orig) if item.fit == "pad" else min(orig)
                    return _fit(im, item.fit, orig), side < TASK.size
                except UnusableImage as e:
                    return e

            with atomic_dir(out, overwrite=overwrite) as tmp:
                for name in SPLITS:
                    (tmp / name).mkdir()
                train = tmp / "train"
                # the real photos may lose a few unusable files: the row count is fixed by --total,
                # so the real rows are written first and the augmentations fill the rest.
                for fname, shape in (("photos.npy", rows_photo), ("inputs.npy", rows_input)):
                    mm = np.lib.format.open_memmap(train / fname, mode="w+", dtype=np.uint8,
                                                   shape=(total, *shape))
                    del mm  # created (sparse); each chunk maps it again, see write_rows

                def write_rows(start: int, block: np.ndarray) -> None:
                    """Write photos rows start.. and their derived inputs through short-lived memory maps
                    (unmapped after each chunk, so the resident memory stays at one chunk)."""
                    for fname, arr in (("photos.npy", block), ("inputs.npy", derive_inputs(block, TASK))):
                        mm = np.lib.format.open_memmap(train / fname, mode="r+")
                        mm[start:start + len(arr)] = arr
                        mm.flush()
                        del mm

                rec_f = open(train / "records.jsonl", "w")
                bar = tqdm(total=total, desc="scale dataset", unit="pair", disable=not progress, smoothing=0.05)
                try:
                    # ---- pass 1: the real photos, rows 0..R-1 ---------------------------------
                    usable: list[Item] = []
                    row = 0
                    for c0 in range(0, n_listed, CHUNK):
                        chunk = items[c0:c0 + CHUNK]
                        arrs = []
                        for item, res in zip(chunk, pool.map(real, chunk)):
                            info = infos[item.src_index]
                            if isinstance(res, UnusableImage):
                                info.skipped[res.reason] = info.skipped.get(res.reason, 0) + 1
                                log.warning("skipping %s/%s: %s", info.dataset, item.member, res)
                                continue
                            arr, up = res
                            info.upscaled += bool(up)
                            info.used += 1
                            usable.append(item)
                            arrs.append(arr)
                            rec_f.write(json.dumps(_record(item, None), sort_keys=True) + "\n")
                        if arrs:
                            block = np.stack(arrs)
                            write_rows(row, block)
                            row += len(block)
                            bar.update(len(block))
                    n_real = row
                    if n_real == 0:
                        raise PixelNNError("no usable images in the sources")
                    counts = aug_counts(n_real, total - n_real)

                    # ---- pass 2: augmentations, rows R..total-1 -------------------------------
                    def augs(r: int):
                        item = usable[r]
                        k = int(counts[r])
                        if k == 0:
                            return []
                        im = _load(srcs[item.src_index], item.member, infos[item.src_index].paired)
                        rng = np.random.default_rng([seed, r, 0])
                        start = int(rng.integers(0, len(COMBOS)))
                        out_arrs = []
                        for j in range(1, k + 1):
                            rj = np.random.default_rng([seed, r, j])
                            out_arrs.append(augment(im, item.fit, rj, aug_ops(rj, start, j)))
                        return out_arrs

                    row = n_real
                    for c0 in range(0, n_real, CHUNK):
                        rs = range(c0, min(c0 + CHUNK, n_real))
                        arrs = []
                        for r, res in zip(rs, pool.map(augs, rs)):
                            item = usable[r]
                            infos[item.src_index].augmented += len(res)
                            for j in range(1, len(res) + 1):
                                rec_f.write(json.dumps(_record(item, j), sort_keys=True) + "\n")
                            arrs.extend(res)
                        if arrs:
                            block = np.stack(arrs)
                            write_rows(row, block)
                            row += len(block)
                            bar.update(len(block))
                    if row != total:
                        raise AssertionError(f"wrote {row} rows, expected {total}")
                finally:
                    bar.close()
                    rec_f.close()

                # empty val/test (Dataset needs the files)
                for name in ("val", "test"):
                    np.save(tmp / name / "photos.npy", np.zeros((0, *rows_photo), np.uint8), allow_pickle=False)
                    np.save(tmp / name / "inputs.npy", np.zeros((0, *rows_input), np.uint8), allow_pickle=False)
                    (tmp / name / "records.jsonl").write_text("")
                pick = np.linspace(0, total - 1, 16).round().astype(int)
                photos = np.load(train / "photos.npy", mmap_mode="r", allow_pickle=False)
                inputs = np.load(train / "inputs.npy", mmap_mode="r", allow_pickle=False)
                save_image(tmp / "preview.png", pair_grid(np.asarray(inputs[pick]), np.asarray(photos[pick])))
                del photos, inputs

                label_keys = ["dataset"]
                for info in infos:
                    label_keys += [k for k in info.label_keys if k not in label_keys]
                label_keys.append("augmented")
                manifest: dict[str, Any] = {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "source": str(data_dir),
                    "task": TASK.to_dict(),
                    "photo_shape": list(rows_photo),
                    "input_shape": list(rows_input),
                    "counts": {"train": total, "val": 0, "test": 0},
                    "label_keys": label_keys,
                    "source_kind": "zip",
                    "sources": {i.dataset: str(i.zip_path) for i in infos},
                    "skipped": {k: v for i in infos for k, v in i.skipped.items()},
                    "fit": {i.dataset: i.fit for i in infos},
                    "split_source": "all train (benchmarks/scale_dataset.py)",
                    "max_upscale": DEFAULT_MAX_UPSCALE,
                    "max_pixels": DEFAULT_MAX_PIXELS,
                    "upscaled": sum(i.upscaled for i in infos),
                    "found": sum(i.found for i in infos),
                    "limit_per_source": limit_per_source,
                    "scale": {
                        "builder": "benchmarks/scale_dataset.py",
                        "seed": seed,
                        "total": total,
                        "real": n_real,
                        "augmented": total - n_real,
                        "row_layout": "rows 0..real-1 real photos, then augmentations grouped by photo",
                        "augmentations": {"combos": ["+".join(c) for c in COMBOS], "crop_scale": list(CROP_SCALE),
                                          "brightness": list(BRIGHTNESS), "contrast": list(CONTRAST),
                                          "saturation": list(SATURATION)},
                        "per_dataset": {i.dataset: {"zip": i.zip_path.name, "found": i.found, "real": i.used,
                                                    "augmented": i.augmented, "total": i.used + i.augmented,
                                                    "fit": i.fit, "skipped": i.skipped, "upscaled": i.upscaled,
                                                    "label_keys": i.label_keys}
                                        for i in infos},
                    },
                    "notes": ["train split only: val and test are empty",
                              "handbags: the LEFT half of each edges2handbags A|B image is the photo"],
                }
                manifest["seconds"] = round(time.perf_counter() - t0, 1)
                # shared by several workers: readable by all (mkdtemp makes the folder 0700)
                for p in [tmp, *tmp.rglob("*")]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
                (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        for s in srcs:
            s.close()
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder holding the four zips")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="dataset folder to create")
    ap.add_argument("--total", type=int, default=DEFAULT_TOTAL, help="train pairs in all (real + augmented)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="decoding/augmentation threads")
    ap.add_argument("--limit-per-source", type=int, default=None, help="only the first K photos of each zip")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = build(args.data_dir, args.out, total=args.total, seed=args.seed, workers=args.workers,
                  limit_per_source=args.limit_per_source, overwrite=args.overwrite, progress=not args.no_progress)
    except PixelNNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = m["scale"]
    print(f"wrote {args.out}: {s['total']} train pairs ({s['real']} real, {s['augmented']} augmented) "
          f"in {m['seconds']} s")
    for name, d in s["per_dataset"].items():
        print(f"  {name:9s} real {d['real']:6d}  augmented {d['augmented']:7d}  total {d['total']:7d}  "
              f"fit {d['fit']}  skipped {d['skipped'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
