"""1M real conv5 descriptors for the index benchmark (issue 12): photos of the four shared zips and
seeded augmentations of them, PCA-reduced to 512-d float16.

Rows
----
The R = 36,252 real photos (shoes 20,145, faces 10,000, cats 4,907, handbag left halves 1,200),
each made square (shoes padded with white, the others centre-cropped) at 128x128, come first in
a seeded random order (so the first 20k mix all datasets); row r < R is real photo ``order[r]``
resized to 96x96. Row r >= R is an augmentation of real row ``r % R``, seeded by r: horizontal
flip (p = 0.5), a random square crop of 65-100 % of the side resized to 96, colour jitter
(brightness, contrast 0.75-1.25, saturation 0.7-1.3). Rows 0..N-1 (N = 1,000,000) are the index
rows; rows N..N+Q-1 (Q = 10,000, all augmentations) are held-out queries.

Files (under ``--out``, default /work/main/runs/scale)
------------------------------------------------------
base_images.npy      (R, 128, 128, 3) uint8, the square real photos, in source order
meta.json            counts, sources, label names, seeds
labels.npz           dataset (N+Q,) int8, category (N+Q,) int8 (-1: not a shoe), source (N+Q,) int32
pca.safetensors      the PCAReducer fitted on rows 0..19,999 (all real)
reduced.npy          (N+Q, 512) float16: PCA-reduced, unit rows
full_100k.npy        (100000, 6400) float16: full descriptors of rows 0..99,999
queries_full.npy     (Q, 6400) float16: full descriptors of the query rows
chunks/NNNN.done     one marker per finished chunk of 10,000 rows (the script resumes)

The PCA is fitted on the float16-stored full descriptors of rows 0..19,999, and chunks 0-1 are
reduced from those stored float16 values; every later chunk is reduced from float32.

Run: ``nice -n 10 python benchmarks/scale_descriptors.py --threads 2``
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
DATASETS = ("shoes", "faces", "cats", "handbags")
CATEGORIES = ("Boots", "Sandals", "Shoes", "Slippers")
BASE = 128
SIZE = 96
N_INDEX = 1_000_000
N_QUERY = 10_000
N_FULL = 100_000
CHUNK = 10_000
PCA_ROWS = 20_000
DIMS = 512
SEED = 12


def square(img, pad: bool):
    """A square RGB PIL image: padded with white (``pad``) or centre-cropped, resized to BASE."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    if pad:
        s = max(w, h)
        canvas = Image.new("RGB", (s, s), (255, 255, 255))
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    else:
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((BASE, BASE), Image.BICUBIC)


def read_sources() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The real photos (R, BASE, BASE, 3) uint8, their dataset codes (R,) and shoe categories (R,)."""
    from PIL import Image

    images, dataset, category = [], [], []
    specs = [("ut-zap50k-images-subset.zip", 0), ("celeba-10k.zip", 1), ("afhq-cat.zip", 2),
             ("edges2handbags-subset.zip", 3)]
    for name, code in specs:
        with zipfile.ZipFile(DATA / name) as z:
            for member in sorted(m for m in z.namelist() if m.lower().endswith(".jpg")):
                img = Image.open(io.BytesIO(z.read(member)))
                if code == 3:  # the photo is the LEFT half
                    img = img.convert("RGB").crop((0, 0, img.width // 2, img.height))
                images.append(np.asarray(square(img, pad=code == 0)))
                dataset.append(code)
                category.append(CATEGORIES.index(member.split("/")[1]) if code == 0 else -1)
        print(f"read {name}: {sum(d == code for d in dataset)} photos", flush=True)
    return np.stack(images), np.array(dataset, np.int8), np.array(category, np.int8)


def augment(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded augmentation of ``base`` (BASE, BASE, 3) uint8 -> (SIZE, SIZE, 3) uint8."""
    from PIL import Image

    img = base[:, ::-1] if rng.random() < 0.5 else base
    side = int(round(BASE * rng.uniform(0.65, 1.0)))
    x0, y0 = rng.integers(0, BASE - side + 1, size=2)
    img = Image.fromarray(np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side]))
    x = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    b, c, s = rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25), rng.uniform(0.7, 1.3)
    x = x * b
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)  # (S, S)
    x = (x - grey.mean()) * c + grey.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey[..., None]) * s + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def chunk_images(base: np.ndarray, order: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Images of rows start..stop-1, (M, SIZE, SIZE, 3) uint8."""
    from PIL import Image

    r_count = len(order)
    out = np.empty((stop - start, SIZE, SIZE, 3), np.uint8)
    for j, r in enumerate(range(start, stop)):
        src = base[order[r % r_count]]
        if r < r_count:
            out[j] = np.asarray(Image.fromarray(src).resize((SIZE, SIZE), Image.BICUBIC))
        else:
            out[j] = augment(src, np.random.default_rng([SEED, r]))
    return out


def open_npy(path: Path, shape: tuple[int, ...], dtype) -> np.memmap:
    if path.exists():
        return np.lib.format.open_memmap(path, mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/main/runs/scale")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=N_INDEX, help="index rows N (queries come after)")
    ap.add_argument("--batch-size", type=int, default=200)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from pixelnn.ann import PCAReducer
    from pixelnn.retrieval import global_descriptors

    out = Path(args.out)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    n_index, total = args.rows, args.rows + N_QUERY
    t0 = time.time()
    if not (out / "base_images.npy").exists():
        images, dataset, category = read_sources()
        np.save(out / "base_images.tmp.npy", images)
        np.savez(out / "sources.npz", dataset=dataset, category=category)
        (out / "base_images.tmp.npy").rename(out / "base_images.npy")
    base = np.load(out / "base_images.npy", mmap_mode="r")
    src = np.load(out / "sources.npz")
    r_count = len(base)
    order = np.random.default_rng(SEED).permutation(r_count)
    rows = np.arange(total)
    source = order[rows % r_count].astype(np.int32)
    query_start = n_index
    if not (out / "labels.npz").exists():
        np.savez(out / "labels.npz", dataset=src["dataset"][source], category=src["category"][source],
                 source=source, augmented=rows >= r_count)
        meta = {"rows": n_index, "queries": N_QUERY, "query_start": query_start, "real": int(r_count),
                "datasets": list(DATASETS), "categories": list(CATEGORIES), "size": SIZE, "base": BASE,
                "full_rows": N_FULL, "chunk": CHUNK, "pca_rows": PCA_ROWS, "dims": DIMS, "seed": SEED,
                "descriptor": "alexnet-relu5-l2 96x96 6400-d"}
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"{r_count} real photos ready ({time.time() - t0:.0f} s)", flush=True)

    reduced = open_npy(out / "reduced.npy", (total, DIMS), np.float16)
    full = open_npy(out / "full_100k.npy", (N_FULL, 6400), np.float16)
    qfull = open_npy(out / "queries_full.npy", (N_QUERY, 6400), np.float16)
    pca_path = out / "pca.safetensors"
    chunks = [(s, min(s + CHUNK, total)) for s in range(0, total, CHUNK)]
    # the PCA's chunks first, then the queries (so that the benchmark can start early), then the rest
    first = [c for c in chunks if c[1] <= PCA_ROWS]
    todo = first + [c for c in chunks if c[0] >= query_start] + [c for c in chunks if c not in first
                                                                 and c[0] < query_start]
    done_rows = 0
    t1 = time.time()
    for start, stop in todo:
        marker = out / "chunks" / f"{start // CHUNK:04d}.done"
        if marker.exists():
            continue
        if not pca_path.exists() and start >= PCA_ROWS:
            PCAReducer.fit(full[:PCA_ROWS], DIMS, sample=PCA_ROWS).save(pca_path)
            print(f"PCA fitted on rows 0..{PCA_ROWS - 1}", flush=True)
            pca = PCAReducer.load(pca_path)
            for s, e in first:
                reduced[s:e] = pca.transform(full[s:e]).astype(np.float16)
                reduced.flush()
                (out / "chunks" / f"{s // CHUNK:04d}.done").write_text("ok")
        images = chunk_images(base, order, start, stop)
        desc = global_descriptors(images, batch_size=args.batch_size)  # (M, 6400) float32
        if start < N_FULL:
            full[start:min(stop, N_FULL)] = desc[:N_FULL - start]
            full.flush()
        if start >= query_start:
            qfull[start - query_start:stop - query_start] = desc
            qfull.flush()
        if pca_path.exists():
            reduced[start:stop] = PCAReducer.load(pca_path).transform(desc).astype(np.float16)
            reduced.flush()
            marker.write_text("ok")
        done_rows += stop - start
        rate = done_rows / (time.time() - t1)
        left = sum(1 for s, _ in chunks if not (out / "chunks" / f"{s // CHUNK:04d}.done").exists())
        print(f"chunk {start // CHUNK:4d} rows {start}..{stop - 1}: {rate:.0f} img/s, {left} chunks left, "
              f"~{left * CHUNK / rate / 60:.0f} min", flush=True)
    print(f"all {total} rows done ({(time.time() - t0) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
