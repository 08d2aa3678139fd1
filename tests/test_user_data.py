"""User data is never destroyed (issue 15, part 2): folders PixelNN did not write are not replaced, inputs
sharing a stem get their own folders, interrupted swaps are undone, temporary entries of dead writers are
cleaned up, one checkpoint file resumes training, and library writers take a lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelnn.errors import PixelNNError
from pixelnn.io import (append_jsonl, atomic_dir, check_replaceable, recover, recover_all, replace_dir, writer_lock)

from .conftest import make_dataset, make_tiny_library

SRC = str(Path(__file__).resolve().parents[1] / "src")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ swaps
def test_a_swap_killed_between_its_renames_is_restored_by_the_next_opener(tmp_path):
    from pixelnn.data.dataset import Dataset

    data = make_dataset(tmp_path / "data", n=12)
    before = _files(data)
    pid = dead_pid()
    os.rename(data, tmp_path / f".data.old.{pid}.abc123")  # what a kill after the first rename leaves
    (tmp_path / f".data.tmp.{pid}.xyz").mkdir()  # ... and the new copy, half-written
    ds = Dataset(data)  # the next command that opens it
    assert ds.split("train").photos.shape[0] == 8
    assert _files(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the temporary entry is gone too


def test_a_completed_swap_leaves_only_the_new_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("new")
    pid = dead_pid()
    old = tmp_path / f".out.old.{pid}.aaaaaa"
    old.mkdir()
    (old / "a.txt").write_text("old")
    lines = recover(tmp_path / "out")
    assert len(lines) == 1 and "deleted" in lines[0]
    assert (tmp_path / "out" / "a.txt").read_text() == "new" and not old.exists()


def test_live_writers_entries_are_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".lib_build.tmp.{sleeper.pid}.abc"
        live.mkdir()
        dead = tmp_path / f".lib_build.tmp.{dead_pid()}.def"
        dead.mkdir()
        (dead / "photos.npy").write_bytes(b"x" * 1000)
        legacy = tmp_path / ".lib_build.tmp.k2j3h4"  # a name without a pid (older PixelNN): not ours to judge
        legacy.mkdir()
        recover_all(tmp_path)
        assert live.exists() and legacy.exists() and not dead.exists()
        # a live process swapping a folder: the opener waits briefly, then says so
        old = tmp_path / f".data.old.{sleeper.pid}.abc"
        old.mkdir()
        with pytest.raises(PixelNNError, match=f"being replaced by process {sleeper.pid}"):
            recover(tmp_path / "data", wait=0.2)
        assert old.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_previous_copy_that_cannot_be_restored_is_reported_with_the_command(tmp_path, monkeypatch):
    pid = dead_pid()
    (tmp_path / f".data.old.{pid}.abc").mkdir()

    def refuse(*a):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(PixelNNError) as e:
        recover(tmp_path / "data")
    msg = str(e.value)
    assert "\n" not in msg and "mv '" in msg and "Permission denied" in msg


def test_replace_dir_swaps_and_atomic_dir_names_carry_the_pid(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("1")
    seen = []
    with atomic_dir(tmp_path / "x", overwrite=True) as tmp:
        seen.append(tmp.name)
        (tmp / "f").write_text("2")
    assert seen[0].startswith(f".x.tmp.{os.getpid()}.")
    assert (tmp_path / "x" / "f").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    (tmp_path / "y").mkdir()
    replace_dir(tmp_path / "y", tmp_path / "x")
    assert not any((tmp_path / "x").iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["x"]


# ------------------------------------------------------------------------------------------ foreign folders
def test_overwrite_refuses_a_folder_pixelnn_did_not_write(tmp_path):
    mine = tmp_path / "holiday"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"precious")
    from pixelnn.data.dataset import REPLACES

    with pytest.raises(PixelNNError) as e:
        with atomic_dir(mine, overwrite=True, replaces=REPLACES, what="dataset"):
            pass
    assert "\n" not in str(e.value) and "is a folder PixelNN did not write (no dataset.json" in str(e.value)
    assert "PixelNN replaces only its own dataset folders" in str(e.value)
    assert (mine / "photo.jpg").read_bytes() == b"precious"
    check_replaceable(tmp_path / "absent", REPLACES, "dataset")  # nothing there: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", REPLACES, "dataset")  # empty: fine


def test_prepare_and_index_overwrite_refuse_a_user_folder(tmp_path, capsys):
    from PIL import Image

    from pixelnn.cli import main

    from .conftest import make_tiny_model_dir, synthetic_photos

    src = tmp_path / "photos"
    src.mkdir()
    for i, im in enumerate(synthetic_photos(6, 48)):
        Image.fromarray(im).save(src / f"p{i}.png")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc = main(["-q", "prepare", str(src), "--out", str(mine), "--task", "superres", "--size", "32", "--factor", "8",
               "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "replaces only its own dataset folders" in err[0]
    model = make_tiny_model_dir(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n=8)
    rc = main(["-q", "index", str(data), "--model", str(model), "--out", str(mine), "--overwrite", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "replaces only its own library folders" in err[0]
    assert _files(mine) == {"notes.txt": b"keep me"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model, data = make_tiny_library(root)
    return root, model, data


def _inputs(folder: Path, data: Path, names: list[str]) -> list[Path]:
    from PIL import Image

    from pixelnn.data.dataset import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    split = Dataset(data).split("val")
    out = []
    for i, name in enumerate(names):
        Image.fromarray(np.asarray(split.inputs[i % len(split)])).save(folder / name)
        out.append(folder / name)
    return out


def _synth(files, model, out, *extra):
    from pixelnn.cli import main

    return main(["-q", "synthesize", *map(str, files), "--model", str(model), "--out", str(out), "--num-outputs", "1",
                 "--pca-dims", "8", "--device", "cpu", *extra])


def test_same_stem_inputs_get_distinct_folders_recorded_in_their_manifests(tiny, tmp_path, capsys):
    from pixelnn.synthesize import output_names

    root, model, data = tiny
    a_png, a_bmp = _inputs(tmp_path / "x", data, ["a.png", "a.bmp"])
    (b,) = _inputs(tmp_path / "y", data, ["a.png"])
    out = tmp_path / "out"
    assert _synth([a_png, a_bmp, b], model, out) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a-bmp", "a-png", "a-png-2"]
    for name, f in (("a-png", a_png), ("a-bmp", a_bmp), ("a-png-2", b)):
        rec = json.loads((out / name / "manifest.json").read_text())["input"]
        assert rec["file"] == str(f.resolve()) and len(rec["sha256"]) == 64
    assert output_names([Path("q/c.png")]) == ["c"]  # a unique stem keeps its plain name
    capsys.readouterr()
    assert _synth([a_png, a_bmp, b], model, out) == 0  # a re-run finds all three complete
    assert "3 already complete" in capsys.readouterr().out


def test_synthesize_never_replaces_a_foreign_folder_or_another_inputs_result(tiny, tmp_path, capsys):
    root, model, data = tiny
    a, c = _inputs(tmp_path / "in", data, ["a.png", "c.png"])
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "thesis.tex").write_text("years of work")
    capsys.readouterr()
    assert _synth([a, c], model, out, "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a PixelNN result" in err[0]
    assert _files(out / "a") == {"thesis.tex": b"years of work"}
    assert (out / "c" / "manifest.json").is_file()  # the other input went on
    b = tmp_path / "other" / "c.png"  # another file with the same name (and other content)
    b.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(b)
    assert _synth([b], model, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the result of another input" in err[0] and "--overwrite" in err[0]
    assert _synth([b], model, out, "--overwrite") == 0
    assert json.loads((out / "c" / "manifest.json").read_text())["input"]["file"] == str(b.resolve())


# ------------------------------------------------------------------------------------------ checkpoints
def _train(data, out, steps, **kw):
    from pixelnn.config import TrainConfig
    from pixelnn.training import train

    cfg = TrainConfig(batch_size=4, max_steps=steps, val_every=5, sample_every=100)
    return train(data, out, cfg, model_overrides={"base_channels": 8, "depth": 2, "norm": "none"}, progress=False,
                 **kw)


def test_one_checkpoint_file_resumes_even_when_the_weights_file_is_ahead(tiny_superres_dataset, tmp_path):
    from safetensors.torch import load_file

    from pixelnn.models.regressor import Regressor

    _train(tiny_superres_dataset, tmp_path / "full", 10)
    _train(tiny_superres_dataset, tmp_path / "cut", 10, should_stop=lambda s: s >= 5)
    state = load_file(str(tmp_path / "cut" / "train_state.safetensors"))
    assert any(k.startswith("weights.regressor.") for k in state)  # weights + optimizer: one file
    # a kill after the weights file of step 10 and before its checkpoint: the weights are ahead
    (tmp_path / "cut" / "regressor.safetensors").write_bytes((tmp_path / "full" / "regressor.safetensors").read_bytes())
    _train(tiny_superres_dataset, tmp_path / "cut", 10)
    a = Regressor.load(tmp_path / "full" / "regressor.safetensors").state_dict()
    b = Regressor.load(tmp_path / "cut" / "regressor.safetensors").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_an_old_two_file_checkpoint_with_mismatched_steps_is_refused(tiny_superres_dataset, tmp_path):
    from safetensors.torch import load_file, safe_open

    from pixelnn.io import tensors_sha256
    from pixelnn.train_loop import save_train_state

    _train(tiny_superres_dataset, tmp_path / "m", 5)
    path = tmp_path / "m" / "train_state.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("weights.")}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    rng = np.random.default_rng(0)
    rng.bit_generator.state = json.loads(meta["rng"])
    save_train_state(path, tensors, step=3, elapsed=1.0, images_seen=12, rng=rng)  # an older PixelNN's state
    assert tensors_sha256(tensors)
    with pytest.raises(PixelNNError) as e:
        _train(tiny_superres_dataset, tmp_path / "m", 10)
    msg = str(e.value)
    assert "\n" not in msg and "at step 5" in msg and "at step 3" in msg and "--restart" in msg
    save_train_state(path, tensors, step=5, elapsed=1.0, images_seen=20, rng=rng)  # the steps agree: resumes
    assert _train(tiny_superres_dataset, tmp_path / "m", 10).steps == 10


def test_a_torn_log_line_is_dropped_before_the_next_one(tmp_path):
    from pixelnn.io import read_jsonl

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "val')
    append_jsonl(log, {"step": 3})
    assert [r["step"] for r in read_jsonl(log)] == [1, 3]


# ------------------------------------------------------------------------------------------ writer lock
HOLD = """
import sys, time
sys.path.insert(0, {src!r})
from pixelnn.io import writer_lock
with writer_lock({target!r}):
    print("held", flush=True)
    time.sleep({seconds})
"""


def test_a_second_writer_waits_with_a_message_then_is_refused_or_proceeds(tmp_path, caplog):
    target = tmp_path / "lib"
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(src=SRC, target=str(target), seconds=1.5)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(PixelNNError) as e:
            with writer_lock(target, timeout=0):
                pass
        assert "\n" not in str(e.value) and f"(pid {p.pid})" in str(e.value)
        with pytest.raises(PixelNNError, match="still runs after 0.2 s"):
            with writer_lock(target, timeout=0.2):
                pass
        t0 = time.monotonic()
        with caplog.at_level("WARNING", "pixelnn.io"):
            with writer_lock(target, timeout=30):
                with writer_lock(target, timeout=0):  # re-entrant in the holder
                    waited = time.monotonic() - t0
        assert waited > 0.3 and f"waiting for another writer of {target} (pid {p.pid})" in caplog.text
    finally:
        p.kill()
        p.wait()


def test_library_changes_reload_what_another_writer_committed(tmp_path):
    from pixelnn.library import ExemplarLibrary

    model, data = make_tiny_library(tmp_path)
    first, second = ExemplarLibrary.open(model / "library"), ExemplarLibrary.open(model / "library")
    more = make_dataset(tmp_path / "b", n=8, seed=3, prefix="b")
    other = make_dataset(tmp_path / "c", n=8, seed=4, prefix="c")
    first.add(more, progress=False)
    second.add(other, progress=False)  # opened before the first add: must not drop its shard
    lib = ExemplarLibrary.open(model / "library")
    assert len(lib) == 26 + 4 + 4 and {"b000", "c000", "a000"} <= set(lib.ids)
