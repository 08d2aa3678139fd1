"""Scale benchmarks of the chunked store (issue 12): open time, bytes per exemplar, RSS and seconds per input.

Sub-commands (each prints a table; docs/results.md, section "Millions of exemplars", has the figures):

    # a store of N rows from a built one: its image arrays hard-linked K times under new ids, each copy with
    # its own global descriptors (the source's plus seeded noise, renormalised: distinct, same basis), and
    # a freshly built index; for RSS and latency at sizes this machine cannot compute stage 1 for
    python benchmarks/scale.py replicate runs/scale/lib-16k runs/scale/lib-1m --rows 1000000

    # open time, disk bytes per exemplar, and synthesis (72 outputs per input) RSS and seconds per input,
    # each store in a fresh process, inputs from a prepared dataset's rows
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


def replicate(src_url: str, dst: str, rows: int, noise: float, seed: int, index_memory: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
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
    for f in (zs.STORE_JSON, zs.MODEL_FILE, zs.REDUCER_FILE):
        if (Path(src.loc.root) / f).exists():
            (dst_p / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src.loc.root) / f, dst_p / f)
    loc = zs.Location(dst)
    rng = np.random.default_rng(seed)
    copies = -(-rows // len(src))
    entries, total = [], 0
    bar = tqdm(total=rows, desc="replicate", unit="row")
    for c in range(copies):
        for e in src.manifest["segments"]:
            if total >= rows:
                break
            name = f"r{c:03d}-{e['name']}"
            seg_src = Path(src.loc.root) / zs.SEGMENTS / e["name"]
            seg_dst = dst_p / zs.SEGMENTS / name
            seg_dst.mkdir(parents=True)
            for sub in ("zarr.json", "photos", "stage1", "inputs"):
                if (seg_src / sub).is_dir():
                    _link_tree(seg_src / sub, seg_dst / sub)
                else:
                    os.link(seg_src / sub, seg_dst / sub)
            g = np.asarray(zarr.open_array(str(seg_src / "global"), mode="r")[:], np.float32)
            if c:
                g = g + noise * rng.standard_normal(g.shape).astype(np.float32)
                g /= np.linalg.norm(g, axis=1, keepdims=True)
            arr = zarr.open_group(str(seg_dst), mode="r+")
            meta = zarr.open_array(str(seg_src / "global"), mode="r")
            out = arr.create_array("global", shape=meta.shape, dtype=meta.dtype, shards=meta.shards,
                                   chunks=meta.chunks, compressors=zs._codecs(), fill_value=0)
            out[:] = g.astype(meta.dtype)
            table = __import__("pyarrow.parquet", fromlist=["x"]).read_table(seg_src / zs.RECORDS)
            if c:
                ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(f"~copy{c}"), "")
                table = table.set_column(table.column_names.index("id"), "id", ids)
            (seg_dst / zs.RECORDS).write_bytes(zs._table_bytes(table))
            info = zs._segment_info(loc, f"{zs.SEGMENTS}/{name}", name, e["count"],
                                    {k: e.get(k) for k in ("dataset", "split")})
            loc.write_json(f"{zs.SEGMENTS}/{name}/{zs.SEGMENT_JSON}", info)
            entries.append({**info, "removed": []})
            total += e["count"]
            bar.update(e["count"])
    bar.close()
    manifest = {"count": total, "segments": entries, "datasets": [], "dim": src.dim,
                "replicated_from": str(src_url)}
    t = time.time()
    manifest["index"] = zs._build_index(loc, manifest, 1, index_memory, progress=True)
    print(f"index {manifest['index']['kind']} over {total} rows built in {time.time() - t:.0f} s")
    zs._commit(loc, manifest, 1)
    lib = zs.ZarrLibrary.open(dst)
    print(lib.summary())


_MEASURE = r"""
import json, resource, sys, time
t0 = time.time()
from pixelnn.library import open_library
lib = open_library(sys.argv[1])
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
    p = sub.add_parser("measure")
    p.add_argument("stores", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepared dataset whose val inputs are synthesized")
    p.add_argument("--inputs", type=int, default=6)
    args = ap.parse_args(argv)
    if args.cmd == "replicate":
        replicate(args.src, args.dst, args.rows, args.noise, args.seed, int(args.index_memory * 2**30))
    else:
        measure(args.stores, args.model, args.data, args.inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
