"""Scale benchmarks of the chunked store (issue 12): open time, bytes per exemplar, RSS and seconds per input.

Sub-commands (each prints a table; docs/results.md, section "Millions of exemplars", has the figures):

    # a store of N rows from a built one, for RSS and latency at sizes this machine cannot compute stage 1
    # for: its image arrays hard-linked again and again under new ids; descriptors, PCA and index from
    # benchmarks/scale_index.py's cache (real photo descriptors and their mixtures, index prebuilt)
    python benchmarks/scale.py replicate runs/scale/lib-16k runs/scale/lib-1m --rows 1000000 \\
        --scale-index runs/scale

    # open time, disk bytes per exemplar, and synthesis (72 outputs per input) RSS and seconds per input,
    # each store in a fresh process, inputs from a prepared dataset's rows
    # what the PCA of the global descriptors costs retrieval (recall@11 against exact 6400-d search)
    python benchmarks/scale.py pca-recall runs/pca/store-full runs/pca/store-pca512 --model runs/model-shoes-sr \\
        --data runs/shoes-sr

    python benchmarks/scale.py measure runs/scale/lib-16k runs/scale/lib-1m --model runs/model-shoes-sr \\
        --data runs/shoes-sr --inputs 6

The index benchmark at 10k/100k/1M is benchmarks/scale_index.py; builds and batch synthesis per engine are
timed by `pixelnn index/synthesize --engine local|ray` (see docs/results.md for the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (no bytes copied)."""
    for root, _, files in os.walk(src):
        out = dst / Path(root).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            os.link(Path(root) / f, out / f)


def _scale_index_vectors(folder: Path, rows: int):
    """benchmarks/scale_index.py's rows 0..rows-1 (its cached real descriptors, then its seeded mixtures), its
    PCA file and its index over exactly those rows."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scale_index import done_rows, rows_of

    meta = json.loads((folder / "meta.json").read_text())
    reduced = np.load(folder / "reduced.npy", mmap_mode="r")
    real = min(done_rows(folder, meta), meta.get("base_rows", rows))
    index = folder / f"index_{rows}.faiss"
    if not index.is_file():
        raise SystemExit(f"{index} is missing: run benchmarks/scale_index.py --sizes {rows} --fill mix first")
    return rows_of(reduced, rows, real), folder / "pca.safetensors", index, real


def replicate(src_url: str, dst: str, rows: int, noise: float, seed: int, index_memory: int,
              scale_index: str | None) -> None:
    """A store of ``rows`` rows: the source's segments hard-linked again and again under new ids.

    Descriptors: with ``scale_index`` (a benchmarks/scale_index.py folder), its rows (real photo
    descriptors and their mixtures) with its PCA and its prebuilt index over them, so nothing is
    recomputed; otherwise the source's own plus seeded noise, and a new index.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import zarr
    from tqdm.auto import tqdm

    from pixelnn import zarr_store as zs

    src = zs.ZarrLibrary.open(src_url)
    if len(src._removed_rows):
        raise SystemExit("replicate a compacted store (no removed rows)")
    dst_p = Path(dst)
    if dst_p.exists():
        shutil.rmtree(dst_p)
    dst_p.mkdir(parents=True)
    info = json.loads((Path(src.loc.root) / zs.STORE_JSON).read_text())
    (dst_p / "model").mkdir()
    shutil.copy2(Path(src.loc.root) / zs.MODEL_FILE, dst_p / zs.MODEL_FILE)
    vectors = index_file = None
    if scale_index:
        vectors, pca, index_file, real = _scale_index_vectors(Path(scale_index), rows)
        (dst_p / "global").mkdir()
        shutil.copy2(pca, dst_p / zs.REDUCER_FILE)
        info["descriptor"]["reducer_sha256"] = zs._sha256((dst_p / zs.REDUCER_FILE).read_bytes())
        info["replicated"] = f"descriptors: {scale_index} ({real} real rows, the rest their mixtures)"
    elif (Path(src.loc.root) / zs.REDUCER_FILE).exists():
        (dst_p / "global").mkdir()
        shutil.copy2(Path(src.loc.root) / zs.REDUCER_FILE, dst_p / zs.REDUCER_FILE)
    (dst_p / zs.STORE_JSON).write_text(json.dumps(info, indent=1) + "\n")
    loc = zs.Location(dst)
    rng = np.random.default_rng(seed)
    pending = np.zeros((0, src.dim), np.float32)

    def take_vectors(m: int, own: np.ndarray, copy: int) -> np.ndarray:
        nonlocal pending
        if vectors is None:
            if not copy:
                return own
            g = own + noise * rng.standard_normal(own.shape).astype(np.float32)
            return g / np.linalg.norm(g, axis=1, keepdims=True)
        while len(pending) < m:
            pending = np.concatenate([pending, next(vectors)])
        out, pending = pending[:m], pending[m:]
        return out

    entries, total, copy = [], 0, 0
    bar = tqdm(total=rows, desc="replicate", unit="row")
    while total < rows:
        for e in src.manifest["segments"]:
            m = min(e["count"], rows - total)
            if m <= 0:
                break
            name = f"r{copy:03d}-{e['name']}"
            seg_src = Path(src.loc.root) / zs.SEGMENTS / e["name"]
            table = pq.read_table(seg_src / zs.RECORDS).slice(0, m)
            if copy:
                ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(f"~copy{copy}"), "")
                table = table.set_column(table.column_names.index("id"), "id", ids)
            meta = zarr.open_array(str(seg_src / "global"), mode="r")
            g = take_vectors(m, np.asarray(meta[:m], np.float32), copy).astype(meta.dtype)
            seg_dst = dst_p / zs.SEGMENTS / name
            if m == e["count"]:  # whole segment: hard-link the image arrays, write descriptors and records
                seg_dst.mkdir(parents=True)
                os.link(seg_src / "zarr.json", seg_dst / "zarr.json")
                for sub in ("photos", "stage1", "inputs"):
                    _link_tree(seg_src / sub, seg_dst / sub)
                out = zarr.open_group(str(seg_dst), mode="r+").create_array(
                    "global", shape=meta.shape, dtype=meta.dtype, shards=meta.shards, chunks=meta.chunks,
                    compressors=zs._codecs(), fill_value=0)
                out[:] = g
                (seg_dst / zs.RECORDS).write_bytes(zs._table_bytes(table))
                files = {f: e["files"][f] for f in e["files"]  # linked files: the source's checksums
                         if f == "zarr.json" or f.split("/")[0] in ("photos", "stage1", "inputs")}
                for f in sorted(zs.Location(str(seg_dst)).files()):
                    if f not in files and f != zs.SEGMENT_JSON:
                        data = (seg_dst / f).read_bytes()
                        files[f] = {"size": len(data), "sha256": zs._sha256(data)}
                seg = {"name": name, "count": m, "dataset": e.get("dataset"), "split": e.get("split"),
                       "files": dict(sorted(files.items())), "bytes": int(sum(v["size"] for v in files.values()))}
                loc.write_json(f"{zs.SEGMENTS}/{name}/{zs.SEGMENT_JSON}", seg)
            else:  # the last, partial segment: copied
                part = zs._Segment(src.loc, e)
                arrays = [{f: part.read(f, np.arange(m)) for f in ("photos", "stage1", "inputs")} | {"global": g}]
                recs = [zs._record_dict(r) for r in table.to_pylist()]
                seg = zs.write_segment(loc, name, arrays, recs, src.image_size, src._empty_shape("inputs"), src.dim,
                                       str(meta.dtype), {k: e.get(k) for k in ("dataset", "split")})
            entries.append({**seg, "removed": []})
            total += m
            bar.update(m)
        copy += 1
    bar.close()
    manifest = {"count": total, "segments": entries, "datasets": [], "dim": src.dim, "replicated_from": str(src_url)}
    t = time.time()
    if index_file is not None:
        (dst_p / zs.INDEX_DIR).mkdir()
        os.link(index_file, dst_p / zs.INDEX_DIR / "00000001.faiss")
        size = (dst_p / zs.INDEX_DIR / "00000001.faiss").stat().st_size
        manifest["index"] = {"file": f"{zs.INDEX_DIR}/00000001.faiss", "kind": "hnsw", "rows": total, "dim": src.dim,
                             "sha256": zs._sha256((dst_p / zs.INDEX_DIR / "00000001.faiss").read_bytes()),
                             "bytes": size, "params": {"prebuilt": str(index_file)}}
    else:
        manifest["index"] = zs._build_index(loc, manifest, 1, index_memory, progress=True)
    print(f"index {manifest['index']['kind']} over {total} rows in {time.time() - t:.0f} s")
    zs._commit(loc, manifest, 1)
    print(zs.ZarrLibrary.open(dst).summary())


_MEASURE = r"""
import json, resource, sys, time
from pixelnn.zarr_store import open_library
t0 = time.time()
lib = open_library(sys.argv[1])  # manifests and records only
t_open = time.time() - t0
import numpy as np
from pixelnn.data.dataset import Dataset
from pixelnn.pipeline import PixelNNPipeline
rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
pipe = PixelNNPipeline.from_model_dir(sys.argv[2], library_dir=sys.argv[1], pixel_cache=False, device="cpu")
split = Dataset(sys.argv[3]).split("val")
n = int(sys.argv[4])
xs = np.asarray(split.inputs[:n + 1])
pipe(xs[n])  # warm-up (descriptor PCA fit, first index pages)
times = []
for x in xs[:n]:
    t = time.time()
    r = pipe(x)
    times.append(time.time() - t)
print(json.dumps({"n": len(lib), "open_s": t_open, "rss_open": rss_open,
                  "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "s_per_input": float(np.median(times)), "outputs": int(len(r.outputs)),
                  "disk": lib.disk_bytes(), "kind": lib.manifest["index"]["kind"]}))
"""


def measure(stores: list[str], model: str, data: str, inputs: int) -> None:
    rows = []
    for s in stores:
        out = subprocess.run([sys.executable, "-c", _MEASURE, s, model, data, str(inputs)], capture_output=True,
                             text=True)
        if out.returncode:
            raise SystemExit(f"{s}: {out.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'store':>28} {'exemplars':>10} {'index':>6} {'open_s':>7} {'KB/ex':>6} {'RSS open':>9} "
          f"{'RSS synth':>10} {'s/input':>8} {'vs first':>8}")
    for s, r in zip(stores, rows):
        print(f"{Path(s).name:>28} {r['n']:>10} {r['kind']:>6} {r['open_s']:>7.2f} {r['disk'] / r['n'] / 1000:>6.1f} "
              f"{r['rss_open'] / 2**30:>7.2f}GB {r['rss_peak'] / 2**30:>8.2f}GB {r['s_per_input']:>8.2f} "
              f"{r['s_per_input'] / rows[0]['s_per_input']:>8.3f}")


def pca_recall(full: str, reduced: str, model: str, data: str, k: int = 11) -> None:
    """recall@k of a reduced store's search against exact search over the full 6400-d descriptors, for the
    stage-1 outputs of a dataset's val inputs (what retrieval sees)."""
    from pixelnn.data.dataset import Dataset
    from pixelnn.zarr_store import open_library
    from pixelnn.models.loading import load_model_dir
    from pixelnn.models.regressor import predict
    from pixelnn.retrieval import global_descriptors

    a, b = open_library(full), open_library(reduced)
    regressor, _ = load_model_dir(model)
    x = np.asarray(Dataset(data).split("val").inputs)
    q = global_descriptors(predict(regressor, x))
    _, truth = a.search(q, k)
    _, got = b.search(q, k)
    rec = np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)])
    print(f"{len(x)} val queries, {len(a)} exemplars: recall@{k} of {Path(reduced).name} "
          f"({b.dim}-d {b.info['descriptor']['stored_dtype']}) against exact {a.dim}-d search = {rec:.3f}")


def same_outputs(libs: list[str], model: str, data: str, inputs: int) -> None:
    """Synthesize a dataset's first val inputs from two libraries; count outputs and correspondences that are
    bit-identical (an upgraded store against its version-1 library)."""
    from pixelnn.data.dataset import Dataset
    from pixelnn.pipeline import PixelNNPipeline

    x = np.asarray(Dataset(data).split("val").inputs[:inputs])
    runs = []
    for lib in libs:
        pipe = PixelNNPipeline.from_model_dir(model, library_dir=lib, pixel_cache=False, device="cpu")
        runs.append([pipe(xi) for xi in x])
    same = sum(np.array_equal(a.outputs, b.outputs) and np.array_equal(a.exemplar, b.exemplar)
               and np.array_equal(a.source_y, b.source_y) and np.array_equal(a.source_x, b.source_x)
               and a.neighbour_ids == b.neighbour_ids for a, b in zip(*runs))
    outs = sum(len(a.outputs) for a in runs[0])
    print(f"{same} of {len(x)} inputs ({outs} outputs) bit-identical between {libs[0]} and {libs[1]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("replicate")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--noise", type=float, default=0.02, help="std of the noise added to each copy's descriptors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-memory", type=float, default=2.0, help="GiB the index may use (chooses its kind)")
    p.add_argument("--scale-index", default=None, metavar="FOLDER",
                   help="take descriptors, PCA and prebuilt index from benchmarks/scale_index.py's cache folder")
    p = sub.add_parser("measure")
    p.add_argument("stores", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepared dataset whose val inputs are synthesized")
    p.add_argument("--inputs", type=int, default=6)
    p = sub.add_parser("pca-recall")
    p.add_argument("full")
    p.add_argument("reduced")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p = sub.add_parser("same")
    p.add_argument("libs", nargs=2)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--inputs", type=int, default=4)
    args = ap.parse_args(argv)
    if args.cmd == "same":
        same_outputs(args.libs, args.model, args.data, args.inputs)
    elif args.cmd == "pca-recall":
        pca_recall(args.full, args.reduced, args.model, args.data)
    elif args.cmd == "replicate":
        replicate(args.src, args.dst, args.rows, args.noise, args.seed, int(args.index_memory * 2**30),
                  args.scale_index)
    else:
        measure(args.stores, args.model, args.data, args.inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
