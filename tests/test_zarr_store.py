"""The chunked exemplar store (pixelnn.zarr_store): format, versions, faults, and equality with the v1 library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pixelnn import zarr_store as zs
from pixelnn.errors import PixelNNError
from pixelnn.library import ExemplarLibrary
from pixelnn.zarr_store import open_library
from pixelnn.store import ExemplarStore

from .conftest import make_dataset, make_tiny_model_dir

FIELDS = ("photos", "stage1", "inputs", "global")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model, two datasets (40 + 20 train pairs), a v1 library and a full-descriptor store of them."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("zs")
    model = make_tiny_model_dir(root / "model")
    a = make_dataset(root / "a", n=44, seed=0, prefix="a")
    b = make_dataset(root / "b", n=24, seed=3, prefix="b")
    v1 = ExemplarLibrary.build(root / "v1", model, [a, b], progress=False)
    store = zs.build_store(root / "store", model, [a, b], progress=False, block_size=16, global_dims=0)
    return {"root": root, "model": model, "a": a, "b": b, "v1": v1, "store": store}


def test_store_matches_v1_library(built):
    v1, st = built["v1"], built["store"]
    assert isinstance(st, ExemplarStore)
    assert len(st) == len(v1) == 60 and len(st._segments) == 5  # 40 in 3 blocks of 16 (16+16+8), 20 in 2 (16+4)
    pos = np.array([59, 0, 17, 17, 33, 40])
    for f in FIELDS:
        assert np.array_equal(st.take(f, pos), v1.take(f, pos)), f
    assert st.ids_of(pos) == v1.ids_of(pos) and st.records_of(pos) == v1.records_of(pos)
    assert st.labels_index() == v1.labels_index()
    for where in ({"kind": "blob"}, {"shade": ["red", "blue"], "kind": "spot"}):
        assert np.array_equal(st.select(where), v1.select(where))
    assert np.array_equal(st.select(ids=["b003", "a001"]), v1.select(ids=["b003", "a001"]))
    q = v1.take("global", [3, 44])
    for allowed in (None, v1.select({"kind": "blob"}), np.array([5])):
        D1, I1 = v1.search(q, 7, allowed)
        D2, I2 = st.search(q, 7, allowed)
        assert np.array_equal(I1, I2) and np.allclose(D1, D2, atol=1e-6)
    assert st.position("b003") == v1.position("b003")


def test_segment_shapes_of_any_size(tmp_path):
    """Shards hold whole inner chunks whatever the segment's length (here 300 rows: global chunks of 256)."""
    loc = zs.Location(tmp_path / "seg")
    rng = np.random.default_rng(0)
    n = 300
    rows = {"photos": rng.integers(0, 255, (n, 8, 8, 3), np.uint8), "stage1": rng.integers(0, 255, (n, 8, 8, 3), np.uint8),
            "inputs": rng.integers(0, 255, (n, 2, 2, 3), np.uint8), "global": rng.random((n, 20)).astype(np.float32)}
    chunks = ({k: v[i:i + 70] for k, v in rows.items()} for i in range(0, n, 70))
    info = zs.write_segment(loc, "s", chunks, [{"id": f"r{i}"} for i in range(n)], 8, (2, 2, 3), 20, "float32")
    seg = zs._Segment(loc, info)
    for k, v in rows.items():
        assert np.array_equal(seg.read(k, np.arange(n)), v) and np.array_equal(seg.read(k, np.array([3, 299])), v[[3, 299]])


def test_bad_ids_and_labels_are_one_line_errors(built):
    st = built["store"]
    for call in (lambda: st.position("nope"), lambda: st.select({"colour": "x"}), lambda: st.select({"kind": "x"}),
                 lambda: st.select(ids=["nope"]), lambda: st.take("photos", [60]), lambda: st.take("pixels", [0])):
        with pytest.raises(PixelNNError) as e:
            call()
        assert "\n" not in str(e.value)


def test_memory_url_and_reduced_descriptors(built, tmp_path):
    st = zs.build_store("memory://pixelnn-test/reduced", built["model"], [built["a"], built["b"]], progress=False,
                        block_size=32, global_dims=8)
    assert st.dim == 8 and st.full_dim == 256 and st.info["descriptor"]["stored_dtype"] == "float16"
    g = st.take("global", np.arange(len(st)))  # (N, 8) float32, exactly float16 values
    assert g.dtype == np.float32 and np.array_equal(g, g.astype(np.float16).astype(np.float32))
    full = built["v1"].take("global", [2, 30])
    q = st.reduce(full)
    sims = q @ g.T
    D, I = st.search(full, 5)
    truth = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert np.array_equal(np.sort(I, 1), np.sort(truth, 1))
    again = open_library("memory://pixelnn-test/reduced")
    assert isinstance(again, zs.ZarrLibrary) and np.array_equal(again.take("photos", [1]), st.take("photos", [1]))


def test_versions_remove_compact_add(built, tmp_path):
    lib = zs.build_store(tmp_path / "s", built["model"], [built["a"]], progress=False, block_size=16, global_dims=0)
    ids = lib.ids
    assert lib.version == 1 and len(lib) == 40
    assert lib.remove(["a001", "a020"]) == 2 and lib.version == 2 and len(lib) == 38
    old = zs.ZarrLibrary.open(tmp_path / "s", version=1)
    assert len(old) == 40 and old.ids == ids  # readers of version 1 still see version 1
    D, I = lib.search(lib.take("global", [0]), 100)
    assert sorted(I[I >= 0].tolist()) == list(range(38))  # the removed rows never come back
    with pytest.raises(PixelNNError):
        lib.remove(["a001"])  # already removed: unknown
    live = lib.ids
    before = {f: lib.take(f, np.arange(38)) for f in FIELDS}
    assert lib.compact() == 2 and lib.version == 3 and lib.ids == live
    for f in FIELDS:
        assert np.array_equal(lib.take(f, np.arange(38)), before[f])
    r = lib.add(built["b"], progress=False)
    assert (r.added, r.skipped) == (20, 0) and len(lib) == 58 and lib.version == 4
    r = lib.add(built["b"], progress=False)
    assert (r.added, r.skipped) == (0, 20) and len(lib) == 58
    assert lib.verify() == []


def test_open_reads_no_arrays(built, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("an array was read")

    monkeypatch.setattr(zs._Segment, "read", boom)
    monkeypatch.setattr(zs._Segment, "array", boom)
    lib = zs.ZarrLibrary.open(built["store"].url)
    assert len(lib) == 60 and lib.ids_of([0]) == ["a000"] and len(lib.select({"kind": "blob"})) == 30
    lib.labels_index()


def test_row_cache_returns_what_the_shards_hold_and_reads_each_row_once(built, monkeypatch):
    """take() keeps the image rows it read (LRU, ROW_CACHE_ROWS per field): same values, order and duplicates as
    the shards, each row read once while kept, the oldest dropped beyond the bound, copies handed out."""
    v1 = built["v1"]
    lib = zs.ZarrLibrary.open(built["store"].url, row_cache_rows=8)
    reads: list[int] = []
    real = zs._Segment.read
    monkeypatch.setattr(zs._Segment, "read", lambda self, field, rows: reads.extend(rows.tolist()) or
                        real(self, field, rows))
    first = [59, 0, 17, 17, 33]
    for f in ("photos", "stage1", "inputs"):
        reads.clear()
        assert np.array_equal(lib.take(f, first), v1.take(f, first)), f
        assert len(reads) == 4  # 4 distinct rows
        reads.clear()
        again = lib.take(f, [17, 59, 0, 33, 0])
        assert reads == [] and np.array_equal(again, v1.take(f, [17, 59, 0, 33, 0]))
        again[:] = 0  # a copy: the kept rows are not touched
        assert np.array_equal(lib.take(f, [17]), v1.take(f, [17]))
        lib.take(f, [1, 2, 3, 4, 5, 6])  # 10 distinct rows asked for so far: the 2 least recently used go
        reads.clear()
        assert np.array_equal(lib.take(f, [59, 0, 17, 33]), v1.take(f, [59, 0, 17, 33])) and len(reads) == 2
    reads.clear()
    lib.take("global", [3, 3])  # descriptors are not kept (the index and the search read them)
    lib.take("global", [3])
    assert reads == [3, 3]
    off = zs.ZarrLibrary.open(built["store"].url, row_cache_rows=0)
    reads.clear()
    off.take("photos", [5])
    off.take("photos", [5])
    assert reads == [5, 5] and off.take("photos", []).shape == (0, *v1.take("photos", [0]).shape[1:])


def test_fast_shard_reader_equals_zarr(built, tmp_path):
    """The image fields are read from their shard files directly (_ShardRows), the same bytes zarr reads; other
    arrays (global descriptors) and unknown codec chains go to zarr; a damaged shard index is one line."""
    import shutil

    lib = zs.ZarrLibrary.open(built["store"].url, row_cache_rows=0)
    for seg in lib._segments:
        rows = np.arange(seg.count)
        for f in ("photos", "stage1", "inputs"):
            fast = zs._ShardRows.of(seg.metadata(f), lib.loc, f"{zs.SEGMENTS}/{seg.name}/{f}")
            assert fast is not None, f
            assert np.array_equal(fast.read(rows), np.asarray(seg.array(f).oindex[rows])), (seg.name, f)
            assert np.array_equal(fast.read(rows[::-2]), np.asarray(seg.array(f).oindex[rows])[::-2])
        assert zs._ShardRows.of(seg.metadata("global"), lib.loc, f"{zs.SEGMENTS}/{seg.name}/global") is None
    seg = lib._segments[0]
    assert zs._ShardRows.of(seg.metadata("photos"), zs.Location("memory://pixelnn-fast"), "x") is None  # remote: zarr
    meta = json.loads(seg.metadata("photos"))
    meta["codecs"][0]["configuration"]["codecs"][-2]["name"] = "blosc"  # another chain: zarr reads it
    assert zs._ShardRows.of(json.dumps(meta).encode(), lib.loc, "x") is None
    assert zs._ShardRows.of(b"not json", lib.loc, "x") is None
    url = tmp_path / "c"
    shutil.copytree(built["store"].url, url)
    seg = zs.ZarrLibrary.open(url).manifest["segments"][0]["name"]
    shard = url / zs.SEGMENTS / seg / "stage1" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the shard index
    shard.write_bytes(bytes(data))
    with pytest.raises(PixelNNError, match="stage1.*checksum") as e:
        zs.ZarrLibrary.open(url).take("stage1", [1])
    assert "\n" not in str(e.value)


def test_killed_build_leaves_last_version(built, tmp_path, monkeypatch):
    url = tmp_path / "k"
    real = zs.write_segment
    calls = {"n": 0}

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed midway
        return real(*a, **k)

    monkeypatch.setattr(zs, "write_segment", dies)
    with pytest.raises(KeyboardInterrupt):
        zs.build_store(url, built["model"], [built["a"]], progress=False, block_size=16, global_dims=0)
    assert not url.exists()  # a new store appears only at its commit
    with pytest.raises(PixelNNError, match="no exemplar library"):
        open_library(url)
    staged = Path(zs._staging_url(zs.Location(url))) / zs.SEGMENTS / "v000001b00000" / zs.SEGMENT_JSON
    stamp = staged.stat().st_mtime_ns  # the first block survived the kill
    monkeypatch.setattr(zs, "write_segment", real)
    lib = zs.build_store(url, built["model"], [built["a"]], progress=False, block_size=16, global_dims=0)
    assert not staged.exists() and (url / zs.SEGMENTS / "v000001b00000" / zs.SEGMENT_JSON).stat().st_mtime_ns == stamp
    assert len(lib) == 40  # resumed: the first block was not recomputed
    calls["n"] = 0
    monkeypatch.setattr(zs, "write_segment", dies)
    with pytest.raises(KeyboardInterrupt):
        lib.add(built["b"], progress=False, block_size=8)
    again = zs.ZarrLibrary.open(url)
    assert again.version == 1 and len(again) == 40  # the interrupted addition is not visible
    monkeypatch.setattr(zs, "write_segment", real)
    again.add(built["b"], progress=False)  # the next writer removes the orphan segment
    names = {e["name"] for e in again.manifest["segments"]}
    assert set(zs.Location(url).listdir(zs.SEGMENTS)) == names and len(again) == 60


def test_write_block_is_idempotent(built, tmp_path):
    plan = zs.plan_build(tmp_path / "p", built["model"], [built["a"]], progress=False, block_size=16, global_dims=0)
    plan = zs.BuildPlan.from_dict(json.loads(json.dumps(plan.to_dict())))  # JSON-able, for workers
    first = [zs.write_block(plan, b) for b in plan.blocks]
    seg = Path(zs.Location(plan.url).path(f"{zs.SEGMENTS}/{plan.blocks[0].segment}"))
    stamp = (seg / zs.SEGMENT_JSON).stat().st_mtime_ns
    again = [zs.write_block(plan, b.__dict__) for b in plan.blocks]
    assert again == first and (seg / zs.SEGMENT_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(PixelNNError, match="not written"):
        zs.commit_build(plan, first[:-1])
    lib = zs.commit_build(plan, first)
    assert len(lib) == 40


def test_faults_are_one_line_errors(built, tmp_path):
    import shutil

    with pytest.raises(PixelNNError, match="no exemplar library"):
        open_library(tmp_path / "missing")
    with pytest.raises(PixelNNError, match="no exemplar library"):
        open_library("memory://pixelnn-test/missing")
    url = tmp_path / "c"
    shutil.copytree(built["store"].url, url)
    info = json.loads((url / zs.STORE_JSON).read_text())
    (url / zs.STORE_JSON).write_text(json.dumps({**info, "version": zs.FORMAT_VERSION + 1}))
    with pytest.raises(PixelNNError, match="upgrade pixelnn"):
        zs.ZarrLibrary.open(url)
    (url / zs.STORE_JSON).write_text(json.dumps(info))
    lib = zs.ZarrLibrary.open(url)
    seg = lib.manifest["segments"][0]["name"]
    shard = url / zs.SEGMENTS / seg / "photos" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PixelNNError, match="checksum") as e:
        zs.ZarrLibrary.open(url).take("photos", [0])
    assert "\n" not in str(e.value)
    assert any("photos" in p for p in zs.ZarrLibrary.open(url).verify())
    rec = url / zs.SEGMENTS / seg / zs.RECORDS
    rec.write_bytes(rec.read_bytes()[:-3] + b"xyz")
    with pytest.raises(PixelNNError, match="checksum"):
        zs.ZarrLibrary.open(url)


def test_upgrade_gives_identical_outputs(built, tmp_path):
    from pixelnn.models.regressor import Regressor
    from pixelnn.pipeline import PixelNNPipeline, load_pixel_descriptor
    from pixelnn.config import TaskConfig

    new = zs.upgrade_library(built["v1"].root, tmp_path / "up", progress=False, block_size=16)
    assert len(new) == len(built["v1"]) and new.ids == list(built["v1"].ids)
    model = Regressor.load(built["model"] / "regressor.safetensors")
    task = TaskConfig(name="superres", size=32, factor=8)
    from pixelnn.data.dataset import Dataset

    x = np.asarray(Dataset(make_dataset(tmp_path / "q", n=8, seed=9, prefix="q")).split("val").inputs[:2])
    outs = []
    for lib in (built["v1"], new):
        pipe = PixelNNPipeline(model, lib, task, load_pixel_descriptor(lib, regressor=model, pca_dims=8, fit_images=16))
        outs.append([pipe(xi, top_k=3, windows=(None, 4), sets=((1,), (1, 2))) for xi in x])
    for a, b in zip(*outs):
        assert np.array_equal(a.outputs, b.outputs) and np.array_equal(a.exemplar, b.exemplar)
        assert np.array_equal(a.source_y, b.source_y) and np.array_equal(a.source_x, b.source_x)
        assert a.neighbour_ids == b.neighbour_ids


def test_cli_index_library_commands(built, tmp_path, capsys):
    from pixelnn.cli import main

    out = tmp_path / "cli-lib"
    assert main(["-q", "index", str(built["a"]), "--model", str(built["model"]), "--out", str(out),
                 "--block-size", "16"]) == 0
    assert isinstance(open_library(out), zs.ZarrLibrary)
    assert main(["-q", "index", str(built["b"]), "--model", str(built["model"]), "--out", str(out),
                 "--remove", "a000"]) == 0
    lib = zs.ZarrLibrary.open(out)
    assert len(lib) == 59 and lib.version == 3
    assert main(["-q", "library", "verify", str(out)]) == 0
    assert main(["-q", "library", "compact", str(out)]) == 0
    assert main(["-q", "library", "upgrade", str(built["v1"].root), str(tmp_path / "up2")]) == 0
    assert main(["-q", "library", "info", str(tmp_path / "up2")]) == 0
    capsys.readouterr()
    assert main(["-q", "library", "info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixelnn library: error:") and "\n" not in err
