"""The size-aware index on real descriptors (issue 12): build time, RAM, disk, latency and recall@11.

Reads the cache written by benchmarks/scale_descriptors.py (``--dir``): ``reduced.npy`` (rows, 512)
float16, ``labels.npz``, ``meta.json`` and, for the PCA's cost, ``full_100k.npy`` /
``queries_full.npy``. For each size n it builds the index :func:`pixelnn.ann.choose_index` picks
(over rows 0..n-1), writes it, re-opens it memory-mapped, and times ``--queries`` single queries
on one thread (``faiss.omp_set_num_threads(1)``); queries are held-out augmented rows (not in the
index). Filters: seeded random subsets of 10 % and 0.1 % of the rows, and the label filter
``dataset = cats``. Recall@11 is against exact search over the same reduced vectors with the
same filter; at 100k also against exact search over the full 6400-d descriptors.

When the cache has fewer finished rows than n, ``--fill jitter`` makes the missing rows from the
real ones (row r = normalise(row (r mod m) + 0.05 noise), float16, seeded) and the table says so;
``--fill none`` (default) skips that size.

Run: ``python benchmarks/scale_index.py --sizes 10000,100000,1000000``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

K = 11
FILTERS = ("none", "random 10%", "random 0.1%", "dataset=cats", "10% via graph")


def rss() -> int:
    """Resident set size of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def index_bytes(ann) -> int:
    """Bytes of the index's arrays (vectors/codes, graph, lists), from faiss's own sizes."""
    import faiss

    index = ann.index
    if ann.kind == "flat":
        return int(index.ntotal) * index.d * 4
    if ann.kind == "hnsw":
        h = index.hnsw
        return (int(index.ntotal) * faiss.downcast_index(index.storage).code_size + h.neighbors.size() * 4
                + h.offsets.size() * 8 + h.levels.size() * 4)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    return int(index.ntotal) * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4 + index.d * index.d * 4


def done_rows(folder: Path, meta: dict) -> int:
    """Rows 0..m-1 whose chunks are finished (the contiguous prefix)."""
    m = 0
    while m < meta["rows"] and (folder / "chunks" / f"{m // meta['chunk']:04d}.done").exists():
        m += meta["chunk"]
    return min(m, meta["rows"])


def rows_of(reduced: np.ndarray, n: int, real: int, seed: int = 5, chunk: int = 65536):
    """Rows 0..n-1 as float32 chunks: the first ``real`` from the cache, the rest jittered copies."""
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        if e <= real:
            yield np.asarray(reduced[s:e], np.float32)
            continue
        r = np.arange(s, e)
        x = np.asarray(reduced[r % real], np.float32)
        jit = r >= real
        noise = np.random.default_rng([seed, s]).normal(scale=0.05 / np.sqrt(x.shape[1]), size=(jit.sum(), x.shape[1]))
        y = x[jit] + noise.astype(np.float32)
        x[jit] = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float16)
        yield x


def exact_topk(q: np.ndarray, chunks, masks: dict[str, np.ndarray | None], k: int = K) -> dict[str, np.ndarray]:
    """Exact top-k row ids (Q, k) per filter, one pass over the rows."""
    best = {f: (np.full((len(q), 0), -np.inf, np.float32), np.zeros((len(q), 0), np.int64)) for f in masks}
    start = 0
    for x in chunks:
        sims = q @ x.T  # (Q, B)
        ids = np.arange(start, start + len(x))
        for f, mask in masks.items():
            s = sims if mask is None else np.where(mask[ids], sims, -np.inf)
            d0, i0 = best[f]
            d = np.concatenate([d0, s], 1)
            i = np.concatenate([i0, np.broadcast_to(ids, s.shape)], 1)
            top = np.argpartition(-d, min(k, d.shape[1]) - 1, axis=1)[:, :k]
            best[f] = np.take_along_axis(d, top, 1), np.take_along_axis(i, top, 1)
        start += len(x)
    out = {}
    for f, (d, i) in best.items():
        i = np.where(np.isneginf(d), -1, i)
        out[f] = np.take_along_axis(i, np.argsort(-d, 1, kind="stable"), 1)
    return out


def recall(I: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(I, gt)]))


def time_queries(ann, q: np.ndarray, allowed, **params) -> tuple[np.ndarray, list[float]]:
    """Row ids (Q, K) and per-query latencies (ms), one query per call."""
    ids, lat = np.empty((len(q), K), np.int64), []
    for j in range(len(q)):
        t = time.perf_counter()
        _, i = ann.search(q[j:j + 1], K, allowed=allowed, **params)
        lat.append((time.perf_counter() - t) * 1e3)
        ids[j] = i[0]
    return ids, lat


def fallback_sweep(ann, q: np.ndarray, n: int, chunks, emit) -> None:
    """Exact small-subset search vs the filtered graph/IVF search, for growing random subsets."""
    sizes = [s for s in (1000, 5000, 20000, 50000) if s < n]
    rng = np.random.default_rng(11)
    subsets = {s: np.sort(rng.choice(n, s, replace=False)) for s in sizes}
    masks = {}
    for s, a in subsets.items():
        masks[s] = np.zeros(n, bool)
        masks[s][a] = True
    gt = exact_topk(q, chunks, masks)
    saved = ann.exact_below
    for s, a in subsets.items():
        parts = []
        for name, below in (("exact", n), ("faiss", 0)):
            ann.exact_below = below
            ids, lat = time_queries(ann, q, a)
            parts.append(f"{name} p50 {np.percentile(lat, 50):.2f} ms recall {recall(ids, gt[s]):.3f}")
        emit(f"# fallback sweep n={n} allowed={s} ({100 * s / n:.2g}%): " + "; ".join(parts))
    ann.exact_below = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/work/main/runs/scale")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--budget-gib", type=float, default=8.0)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--fill", choices=("none", "jitter"), default="none")
    ap.add_argument("--ef", default="32,64,128", help="HNSW efSearch values to report (unfiltered)")
    ap.add_argument("--ef-construction", type=int, default=None)
    ap.add_argument("--fallback-sweep", action="store_true", help="time exact vs filtered faiss search")
    ap.add_argument("--out", default=None, help="table file (default DIR/index_table.txt)")
    args = ap.parse_args()

    import faiss

    from pixelnn.ann import AnnIndex, choose_index

    folder = Path(args.dir)
    meta = json.loads((folder / "meta.json").read_text())
    reduced = np.load(folder / "reduced.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npz")
    have = done_rows(folder, meta)
    qs = meta["query_start"]
    q = np.asarray(reduced[qs:qs + args.queries], np.float32)  # held-out augmented rows
    cats = meta["datasets"].index("cats")
    lines = [f"# scale_index: {args.queries} held-out augmented queries, k={K}, single-thread latency; "
             f"{have} real rows cached; budget {args.budget_gib} GiB",
             f"{'n':>8} {'rows':>6} {'kind':>5} {'build_s':>7} {'index_B':>11} {'rssΔbuild':>10} {'rssΔopen':>9} "
             f"{'disk_B':>11} {'filter':>13} {'allowed':>8} {'param':>9} {'p50_ms':>7} {'p95_ms':>7} "
             f"{'rec@11':>6} {'rec6400':>7}"]
    out_path = Path(args.out) if args.out else folder / "index_table.txt"

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        out_path.write_text("\n".join(lines) + "\n")

    for line in lines:
        print(line)
    for n in [int(s) for s in args.sizes.split(",")]:
        if n > have and args.fill == "none":
            emit(f"# {n}: skipped, only {have} rows cached (use --fill jitter)")
            continue
        real = min(n, have)
        rows_note = "real" if real == n else f"{real // 1000}k+j"
        kind = choose_index(n, reduced.shape[1], int(args.budget_gib * 2**30))
        faiss.omp_set_num_threads(args.build_threads)
        r0, t0 = rss(), time.time()
        extra = {} if args.ef_construction is None else {"ef_construction": args.ef_construction}
        ann = AnnIndex.build(rows_of(reduced, n, real), n=n, kind=kind, dim=reduced.shape[1], **extra)
        build_s, rss_build = time.time() - t0, rss() - r0
        path = folder / f"index_{n}.faiss"
        ann.write(path)
        ibytes = index_bytes(ann)
        del ann
        r1 = rss()
        ann = AnnIndex.read(path, mmap=True)
        rss_open = rss() - r1
        disk = os.path.getsize(path)
        rng = np.random.default_rng(7)
        allowed = {"none": None,
                   "random 10%": np.sort(rng.choice(n, n // 10, replace=False)),
                   "random 0.1%": np.sort(rng.choice(n, max(1, n // 1000), replace=False)),
                   "dataset=cats": np.flatnonzero(labels["dataset"][np.arange(n) % real] == cats)}
        allowed["10% via graph"] = allowed["random 10%"]  # the same filter, forced through faiss (no exact path)
        masks = {}
        for f, a in allowed.items():
            if a is None:
                masks[f] = None
            else:
                m = np.zeros(n, bool)
                m[a] = True
                masks[f] = m
        faiss.omp_set_num_threads(args.build_threads)
        gt = exact_topk(q, rows_of(reduced, n, real), masks)
        gt_full = None
        if n == meta["full_rows"] and (folder / "full_100k.npy").exists():
            full = np.load(folder / "full_100k.npy", mmap_mode="r")
            qf = np.asarray(np.load(folder / "queries_full.npy", mmap_mode="r")[:args.queries], np.float32)
            gt_full = exact_topk(qf, (np.asarray(full[s:s + 16384], np.float32) for s in range(0, n, 16384)),
                                 {"none": None})["none"]
            emit(f"# {n}: exact search over the 512-d PCA vectors vs exact 6400-d: recall@11 = "
                 f"{recall(gt['none'], gt_full):.3f} (the PCA's cost)")
        faiss.omp_set_num_threads(1)
        head = (f"{n:>8} {rows_note:>6} {kind:>5} {build_s:>7.1f} {ibytes:>11} {rss_build:>10} {rss_open:>9} "
                f"{disk:>11}")
        sweep = [int(e) for e in args.ef.split(",")] if kind == "hnsw" else [None]
        for f in FILTERS:
            if f == "10% via graph" and (kind == "flat" or len(allowed[f]) > ann.exact_below):
                continue
            forced = f == "10% via graph"
            saved, ann.exact_below = ann.exact_below, (0 if forced else ann.exact_below)
            for ef in (sweep if f == "none" else [None]):
                params = {} if ef is None else {"ef_search": ef}
                time_queries(ann, q[:20], allowed[f], **params)  # warm up (page in the map)
                ids, lat = time_queries(ann, q, allowed[f], **params)
                label = "-" if kind == "flat" else (f"ef={ef or ann.ef_search}" if kind == "hnsw"
                                                    else f"np={ann.nprobe}")
                if allowed[f] is not None and len(allowed[f]) <= ann.exact_below:
                    label = "exact"
                elif allowed[f] is not None and kind == "hnsw":
                    label = f"ef={ann.filtered_ef(len(allowed[f]) / n, ef)}"
                rf = f"{recall(ids, gt_full):.3f}" if gt_full is not None and f == "none" else "-"
                count = n if allowed[f] is None else len(allowed[f])
                emit(f"{head} {f:>13} {count:>8} {label:>9} {np.percentile(lat, 50):>7.2f} "
                     f"{np.percentile(lat, 95):>7.2f} {recall(ids, gt[f]):>6.3f} {rf:>7}")
            ann.exact_below = saved
        if args.fallback_sweep and kind != "flat":
            fallback_sweep(ann, q[:100], n, rows_of(reduced, n, real), emit)
        del ann


if __name__ == "__main__":
    main()
