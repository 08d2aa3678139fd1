"""The engines (pixelnn.engine): ``--engine ray`` writes what ``--engine local`` writes, survives a killed
worker, reports what keeps failing; library builds over blocks; the local path never imports Ray.

The Ray tests share one local Ray cluster per module: ``ray.init(num_cpus=2)`` in this process (see
docs/scale.md, section Engine, for why not ``ray start`` head + worker nodes here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from pixelnn.errors import PixelNNError
from tests.conftest import make_tiny_library, synthetic_photos

ROOT = Path(__file__).resolve().parents[1]
ray_test = pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None,
                              reason="ray is not installed (pip install 'pixelnn[cluster]')")


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model with its library and a folder of 6 inputs (4x4 superres inputs)."""
    from pixelnn.tasks import area_downsample

    root = tmp_path_factory.mktemp("engine")
    model, _ = make_tiny_library(root)
    inputs = root / "inputs"
    inputs.mkdir()
    for i, im in enumerate(area_downsample(synthetic_photos(6, 32, seed=5), 8)):
        Image.fromarray(im).save(inputs / f"x{i:03d}.png")
    return model, inputs


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the module; workers import pixelnn and tests from this checkout."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _files(d: Path) -> dict[str, Path]:
    return {str(p.relative_to(d)): p for p in sorted(d.rglob("*")) if p.is_file()}


def assert_same_results(a: Path, b: Path) -> None:
    """Every file byte-identical, except each manifest.json's timings (measured, so they differ)."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name, p in fa.items():
        if p.name == "manifest.json":
            ma, mb = json.loads(p.read_text()), json.loads(fb[name].read_text())
            ma.pop("timings"), mb.pop("timings")
            assert ma == mb, name
        else:
            assert p.read_bytes() == fb[name].read_bytes(), name


# ------------------------------------------------------------------------------------- no Ray needed
def test_local_path_imports_no_ray(tiny, tmp_path):
    model, inputs = tiny
    code = ("import sys; from pixelnn.cli import main; "
            f"rc = main(['-q', 'synthesize', {str(inputs)!r}, '--model', {str(model)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '--num-outputs', '2']); "
            "assert rc == 0, rc; assert 'ray' not in sys.modules, 'ray was imported'; print('ok')")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    assert len(list((tmp_path / "out").iterdir())) == 6


def test_list_file_inputs(tiny, tmp_path):
    from pixelnn.synthesize import expand_inputs

    _, inputs = tiny
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# two files and a glob\n{inputs / 'x001.png'}\n\n{inputs}/x00[45].png\n")
    assert [p.name for p in expand_inputs([lst])] == ["x001.png", "x004.png", "x005.png"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PixelNNError, match="names no inputs"):
        expand_inputs([tmp_path / "empty.txt"])


def test_engine_options_are_checked():
    from pixelnn.engine import check_engine_options

    with pytest.raises(PixelNNError, match="need --engine ray"):
        check_engine_options("local", address="127.0.0.1:1")
    with pytest.raises(PixelNNError, match="--num-workers must be >= 1"):
        check_engine_options("ray", num_workers=0)
    with pytest.raises(PixelNNError, match="--retries"):
        check_engine_options("ray", retries=-1)


# a fake build: plan.blocks are ints; write_block returns an info dict; commit_build records its call
@dataclass
class FakePlan:
    blocks: list
    flaky: Path | None = None   # block 1 fails the first time when set (a marker file)
    broken: tuple = ()          # these blocks always fail
    commits: list = field(default_factory=list)


def fake_write_block(plan: FakePlan, block: int) -> dict:
    if block in plan.broken:
        raise OSError(f"disk error on block {block}")
    if plan.flaky is not None and block == 1 and not plan.flaky.exists():
        plan.flaky.write_text("failed once")
        raise OSError("transient")
    return {"segment": f"seg{block:05d}", "count": 10 + block, "pid": os.getpid()}


def fake_commit(plan: FakePlan, infos: list) -> dict:
    plan.commits.append([i["segment"] for i in infos])
    return {"segments": [i["segment"] for i in infos], "count": sum(i["count"] for i in infos)}


def test_build_library_local_retries_then_commits_once(tmp_path):
    from pixelnn.engine import build_library

    plan = FakePlan(list(range(4)), flaky=tmp_path / "flaky")
    lib = build_library(plan, "local", progress=False, write_block=fake_write_block, commit_build=fake_commit)
    assert lib == {"segments": ["seg00000", "seg00001", "seg00002", "seg00003"], "count": 46}
    assert plan.commits == [lib["segments"]] and (tmp_path / "flaky").exists()
    broken = FakePlan(list(range(3)), broken=(2,))
    with pytest.raises(PixelNNError, match=r"1 of 3 blocks failed after 3 attempts \(block 2: OSError: disk"):
        build_library(broken, "local", progress=False, write_block=fake_write_block, commit_build=fake_commit)
    assert broken.commits == []


def test_build_library_resumed_sends_only_unwritten_blocks(tmp_path):
    """Blocks an interrupted run wrote are counted as done (the bar starts there) and never rewritten."""
    from pixelnn.engine import build_library

    calls = []

    def write(plan, block):
        calls.append(block)
        return fake_write_block(plan, block)

    def written(plan, block):
        return {"segment": f"seg{block:05d}", "count": 10 + block, "pid": -1} if block in (0, 2) else None

    plan = FakePlan(list(range(4)))
    lib = build_library(plan, "local", progress=False, write_block=write, commit_build=fake_commit,
                        written_block=written)
    assert calls == [1, 3]
    assert lib == {"segments": ["seg00000", "seg00001", "seg00002", "seg00003"], "count": 46}
    done = FakePlan(list(range(2)))
    calls.clear()
    build_library(done, "ray", progress=False, write_block=write, commit_build=fake_commit,
                  written_block=lambda p, b: {"segment": f"seg{b:05d}", "count": 1})  # never starts Ray
    assert calls == [] and done.commits == [["seg00000", "seg00001"]]


def test_drop_stderr_lines_keeps_the_others(capfd):
    from pixelnn.engine import drop_stderr_lines

    with drop_stderr_lines("noise"):
        os.write(2, b"[I logging.cc:303] some noise here\nreal error\n")
        os.write(2, b"more noise\n")
    with pytest.raises(RuntimeError), drop_stderr_lines("noise"):
        os.write(2, b"before the failure\n")
        raise RuntimeError("x")
    assert capfd.readouterr().err == "real error\nbefore the failure\n"


# ------------------------------------------------------------------------------------- Ray
@ray_test
def test_unreachable_address_is_one_fast_line(tiny, tmp_path, capsys):
    import socket

    from pixelnn.cli import main

    model, inputs = tiny
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    rc = main(["-q", "synthesize", str(inputs), "--model", str(model), "--out", str(tmp_path / "o"),
               "--engine", "ray", "--address", f"127.0.0.1:{port}"])
    assert rc == 2 and time.perf_counter() - t0 < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in err[0], err
    assert not (tmp_path / "o").exists()


@ray_test
def test_address_that_is_not_ray_is_one_fast_line(tiny, tmp_path, capsys):
    """A port that answers, but not as Ray's gRPC GCS (here a fake HTTP/1 server), must not hang ray.init."""
    import socket
    import threading

    from pixelnn.cli import main

    model, inputs = tiny
    server = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    t0 = time.perf_counter()
    with server:
        rc = main(["-q", "synthesize", str(inputs), "--model", str(model), "--out", str(tmp_path / "o"),
                   "--engine", "ray", "--address", f"127.0.0.1:{server.getsockname()[1]}"])
    assert rc == 2 and time.perf_counter() - t0 < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answers, but not as a Ray cluster" in err[0], err


@ray_test
def test_ray_engine_writes_what_local_writes(tiny, tmp_path, ray_cluster, capsys):
    from pixelnn.cli import main

    model, inputs = tiny
    common = [str(inputs), "--model", str(model), "--num-outputs", "3", "--batch-size", "2"]
    assert main(["-q", "synthesize", *common, "--out", str(tmp_path / "local")]) == 0
    gcs = ray_cluster._private.worker.global_worker.node.gcs_address  # --address: checked, then this connection
    assert main(["-q", "synthesize", *common, "--out", str(tmp_path / "ray"), "--engine", "ray",
                 "--address", gcs, "--num-workers", "2"]) == 0
    assert "3 outputs for each of 6 inputs" in capsys.readouterr().out
    assert_same_results(tmp_path / "local", tmp_path / "ray")
    # a re-run skips what is complete
    assert main(["-q", "synthesize", *common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert "6 already complete" in capsys.readouterr().out


@ray_test
def test_ray_engine_with_regions_writes_what_local_writes(tiny, tmp_path, ray_cluster, monkeypatch):
    """Region masks and "like" photos given as relative paths reach the workers (their cwd is not ours)."""
    import numpy as np

    from pixelnn.cli import main

    model, inputs = tiny
    monkeypatch.chdir(tmp_path)
    mask = np.zeros((32, 32), np.uint8)
    mask[16:] = 255
    Image.fromarray(mask).save("bottom.png")
    like = sorted(inputs.glob("*.png"))[0]
    Image.open(like).resize((32, 32)).save("like.png")
    common = [str(inputs), "--model", str(model), "--num-outputs", "4", "--region", "bottom.png:kind=blob",
              "--region", "bottom.png:like=like.png", "--region-blend", "3"]
    assert main(["-q", "synthesize", *common, "--out", "local"]) == 0
    assert main(["-q", "synthesize", *common, "--out", "ray", "--engine", "ray", "--num-workers", "2"]) == 0
    assert_same_results(tmp_path / "local", tmp_path / "ray")
    z = np.load(next((tmp_path / "ray").glob("*/correspondences.npz")))
    assert (z["region"][16:] == 2).all() and (z["region"][:16] == 0).all()


@ray_test
def test_a_worker_that_cannot_start_is_one_line(tiny, tmp_path, ray_cluster, capsys):
    from pixelnn.cli import main

    model, inputs = tiny
    rc = main(["-q", "synthesize", str(inputs), "--model", str(model), "--out", str(tmp_path / "o"),
               "--engine", "ray", "--num-workers", "1", "--library", str(tmp_path / "nowhere")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no exemplar library" in err[0], err


class LoggingWorker:
    """Mixed into SynthesisWorker subclasses: every completed write appends its stem to ../writes.log."""

    def save(self, result, path, photo):
        super().save(result, path, photo)
        with open(self.out_dir.parent / "writes.log", "a") as f:
            f.write(path.stem + "\n")


def _crash_once_worker():
    from pixelnn.synthesize import SynthesisWorker

    class CrashOnce(LoggingWorker, SynthesisWorker):
        """Kills its own process the first time it is given x002, after writing its batch-mates."""

        def __call__(self, batch):
            marker = self.out_dir.parent / "crashed"
            if any(str(k).endswith("x002.png") for k in batch["key"]) and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return CrashOnce


@ray_test
def test_killed_worker_loses_nothing_and_writes_once(tiny, tmp_path, ray_cluster):
    from pixelnn.synthesize import synthesize_ray
    from pixelnn.options import SynthesisOptions

    model, inputs = tiny
    out = tmp_path / "out"
    report = synthesize_ray([inputs], model, out, SynthesisOptions(num_outputs=2), batch_size=2, num_workers=2,
                            progress=False, worker_cls=_crash_once_worker())
    assert (tmp_path / "crashed").exists()  # a worker did die
    assert sorted(p.stem for p in report.done) == [f"x{i:03d}" for i in range(6)] and not report.failed
    writes = (tmp_path / "writes.log").read_text().split()
    assert sorted(writes) == [f"x{i:03d}" for i in range(6)]  # each exactly once
    assert sorted(p.name for p in out.iterdir()) == [f"x{i:03d}" for i in range(6)]  # no temp folders, no failures
    assert all((out / f"x{i:03d}" / "manifest.json").is_file() for i in range(6))


def _fail_on_x001_worker():
    from pixelnn.synthesize import SynthesisWorker

    class FailOnX001(LoggingWorker, SynthesisWorker):
        """x001 cannot be saved (an exception); x003 kills its worker process, every time."""

        def __call__(self, batch):
            if any(str(k).endswith("x003.png") for k in batch["key"]):
                os._exit(1)
            return super().__call__(batch)

        def save(self, result, path, photo):
            if path.stem == "x001":
                raise RuntimeError("cannot write x001")
            super().save(result, path, photo)

    return FailOnX001


@ray_test
def test_failing_inputs_end_in_failures_jsonl(tiny, tmp_path, ray_cluster):
    import shutil

    from pixelnn.synthesize import synthesize_ray
    from pixelnn.options import SynthesisOptions

    model, inputs = tiny
    folder = tmp_path / "inputs"
    shutil.copytree(inputs, folder)
    (folder / "x002.png").write_bytes(b"not a png")  # unreadable: final at once
    out = tmp_path / "out"
    report = synthesize_ray([folder], model, out, SynthesisOptions(num_outputs=2), batch_size=3, num_workers=2,
                            retries=1, progress=False, worker_cls=_fail_on_x001_worker())
    # batches [x000 x001 x002] [x003 x004 x005]: x003's batch-mates come through in the next round
    assert sorted(p.stem for p in report.done) == ["x000", "x004", "x005"]
    assert sorted(p.stem for p, _ in report.failed) == ["x001", "x002", "x003"]
    assert "3 failed (listed in" in report.summary()
    rows = {Path(r["input"]).stem: r for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert rows["x001"]["attempts"] == 2 and "RuntimeError: cannot write x001" in rows["x001"]["error"]
    assert rows["x003"]["attempts"] == 2 and "task failed" in rows["x003"]["error"], rows["x003"]
    assert rows["x002"]["attempts"] == 1 and rows["x002"]["error"]
    assert sorted((tmp_path / "writes.log").read_text().split()) == ["x000", "x004", "x005"]
    assert not any((out / f"x00{i}").exists() for i in (1, 2, 3))


@ray_test
def test_build_library_ray_matches_local(tmp_path, ray_cluster):
    from pixelnn.engine import build_library

    local = build_library(FakePlan(list(range(5))), "local", progress=False, write_block=fake_write_block,
                          commit_build=fake_commit)
    plan = FakePlan(list(range(5)))  # (retries of a block that failed once: the local test; here x001's)
    lib = build_library(plan, "ray", num_workers=2, progress=False, write_block=fake_write_block,
                        commit_build=fake_commit)
    assert lib == local and len(plan.commits) == 1
    broken = FakePlan(list(range(3)), broken=(0,))
    with pytest.raises(PixelNNError, match=r"1 of 3 blocks failed after 2 attempts \(block 0: OSError"):
        build_library(broken, "ray", num_workers=2, retries=1, progress=False, write_block=fake_write_block,
                      commit_build=fake_commit)
    assert broken.commits == []


def _same_store(a: Path, b: Path) -> None:
    """Two chunked stores hold the same bytes, JSON files up to their timestamps."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("time", "created", "committed")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name, p in fa.items():
        if p.suffix == ".json":
            assert strip(json.loads(p.read_text())) == strip(json.loads(fb[name].read_text())), name
        else:  # arrays, records, index, weights and the PCA: byte for byte
            assert p.read_bytes() == fb[name].read_bytes(), name


@ray_test
def test_index_engine_ray_builds_the_same_store(tmp_path, ray_cluster, capsys):
    """`pixelnn index --engine ray` (zarr_store blocks over the actor pool) writes what --engine local writes."""
    from pixelnn.cli import main
    from pixelnn.zarr_store import open_library
    from tests.conftest import make_dataset, make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n=40, seed=1)
    common = [str(data), "--model", str(model), "--block-size", "10", "--global-dims", "8"]
    assert main(["-q", "index", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["-q", "index", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--num-workers", "2"]) == 0
    capsys.readouterr()
    assert len(open_library(tmp_path / "ray")) == 36
    _same_store(tmp_path / "local", tmp_path / "ray")


def dying_write_block(plan, block):
    """zarr_store.write_block, except that the worker process dies (os._exit) the first time it gets block 1."""
    from pixelnn import zarr_store

    marker = Path(zarr_store.Location(plan.url).root).parent / "died-once"
    if block.segment.endswith("b00001") and not marker.exists():
        marker.write_text("killed mid-build")
        os._exit(1)
    return zarr_store.write_block(plan, block)


@ray_test
def test_killed_worker_mid_build_completes_the_store(tmp_path, ray_cluster):
    """A worker process killed mid-build: Ray restarts it, the block is redone, the store commits once and
    equals a local build (nothing lost, nothing written twice)."""
    import numpy as np

    from pixelnn import zarr_store
    from pixelnn.engine import build_library
    from tests.conftest import make_dataset, make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n=34)
    plan = zarr_store.plan_build(tmp_path / "lib", model, [data], block_size=10, global_dims=0, progress=False)
    lib = build_library(plan, "ray", num_workers=2, progress=False, write_block=dying_write_block)
    assert (tmp_path / "died-once").exists() and lib.version == 1
    ref = zarr_store.build_store(tmp_path / "ref", model, [data], block_size=10, global_dims=0, progress=False)
    assert lib.ids == ref.ids and len(lib) == 30
    for f in ("photos", "stage1", "inputs", "global"):
        assert np.array_equal(lib.take(f, np.arange(30)), ref.take(f, np.arange(30))), f
    assert [s.name for s in lib._segments] == [s.name for s in ref._segments]
    assert not [n for n in zarr_store.Location(tmp_path / "lib").listdir(zarr_store.SEGMENTS) if n.startswith(".tmp")]
