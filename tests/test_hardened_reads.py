"""Every file read is checked (issue 15, part 3): damaged JSON/JSONL, configs of the wrong shape, weights that
differ from their recorded sha256 and bad pixel-cache entries give one-line PixelNNErrors (exit status 2 from the
CLI, no traceback) or, for caches, are recomputed; never a traceback or a silently different result."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelnn.cli import main
from pixelnn.errors import PixelNNError
from pixelnn.io import config_from, need, parse_json, read_json, read_jsonl, read_text

from .conftest import make_dataset, make_tiny_library, make_tiny_model_dir, synthetic_photos

#: Damaged contents for a file that should hold a JSON object, and what the message must say.
DAMAGES = {
    "empty": (b"", "empty"),
    "blank": (b"  \n", "empty"),
    "truncated": (b'{"format": "pixelnn-model", "task": {"name": "sup', "not valid JSON (line 1, column"),
    "binary": (bytes(range(256)) * 4, "not valid JSON (not UTF-8 text"),
    "garbage": (b"\x00\x01not json at all", "not valid JSON"),
    "list": (b"[1, 2, 3]\n", "expected an object, got a list"),
    "string": (b'"hello"\n', "expected an object, got a string"),
    "number": (b"42\n", "expected an object, got an integer"),
}


def one_line_error(fn, *args, **kwargs) -> str:
    """The message of the PixelNNError ``fn`` raises; asserts it is one line."""
    with pytest.raises(PixelNNError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI; assert exit status 2, one error line on stderr and no traceback; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pixelnn ") and ": error: " in lines[0], err
    return lines[0]


# ------------------------------------------------------------------------------------- the checked reader
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_read_json_damaged(tmp_path, damage):
    data, want = DAMAGES[damage]
    path = tmp_path / "config.json"
    path.write_bytes(data)
    msg = one_line_error(read_json, path, "model config", dict)
    assert msg.startswith(f"model config {path}: ") and want in msg, msg


def test_read_json_missing_folder_and_unreadable(tmp_path):
    assert one_line_error(read_json, tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: missing"
    assert "is a folder" in one_line_error(read_json, tmp_path)
    (tmp_path / "x.json").write_text('{"a": [1]}')
    assert read_json(tmp_path / "x.json", expect=dict) == {"a": [1]}


def test_read_json_reports_line_and_column(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n  "a": 1,\n  "b" 2\n}\n')
    msg = one_line_error(read_json, path)
    assert msg == f"{path}: not valid JSON (line 3, column 7): Expecting ':' delimiter", msg


def test_read_jsonl(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]
    path.write_text('{"id": "a"}\n[1]\n')
    assert one_line_error(read_jsonl, path) == f"{path}: line 2: expected an object, got a list"
    path.write_text('{"id": "a"}\n{"id": "b", "la')
    msg = one_line_error(read_jsonl, path, "dataset records")
    assert msg.startswith(f"dataset records {path}: line 2: not valid JSON (column") and "truncated" in msg
    path.write_bytes(b'{"id": "a"}\n\xff\xfe\x00\x00')
    assert "not UTF-8" in one_line_error(read_jsonl, path)
    path.unlink()
    assert one_line_error(read_jsonl, path).endswith(": missing")


def test_read_text_and_parse_json():
    with pytest.raises(PixelNNError, match="not UTF-8"):
        parse_json(b"\xff\xfe", "X")
    assert parse_json(b'{"a": 1}', "X", expect=dict) == {"a": 1}
    with pytest.raises(PixelNNError, match="^X: expected a list, got an object$"):
        parse_json('{"a": 1}', "X", expect=list)


def test_read_text_binary(tmp_path):
    (tmp_path / "list.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    assert "not UTF-8 text" in one_line_error(read_text, tmp_path / "list.txt", "list file")


def test_need_and_config_from_name_the_file_and_key():
    from pixelnn.config import RegressorConfig, TaskConfig, TrainConfig

    assert one_line_error(need, {"a": 1}, "task", "c.json") == "c.json: missing key 'task'"
    assert one_line_error(need, {"task": [1]}, "task", "c.json", dict) == "c.json: 'task' should be an object, got a list [1]"
    assert one_line_error(need, [1], "task", "c.json") == "c.json: expected an object, got a list"
    cases = [(TaskConfig, {"size": "big"}, "c.json: task.size should be an integer, got a string 'big'"),
             (TaskConfig, {"size": 32, "factor": 8.5}, "c.json: task.factor should be an integer, got a number 8.5"),
             (TaskConfig, {"name": "superres", "size": True}, "c.json: task.size should be an integer, got true/false true"),
             (TaskConfig, [32], "c.json: task should be an object, got a list"),
             (TaskConfig, {"name": "nonsense"}, "c.json: task: invalid task 'nonsense'"),
             (RegressorConfig, {"base_channels": None}, "c.json: task.base_channels should be an integer, got null"),
             (TrainConfig, {"minutes": "5"}, "c.json: task.minutes should be a number or null, got a string '5'"),
             (TrainConfig, {"perceptual_layers": [3]}, "c.json: task.perceptual_layers should be a list")]
    for cls, d, want in cases:
        assert one_line_error(config_from, cls, d, "c.json", "task").startswith(want), (d, want)
    # valid values (and JSON's integers for floats, missing keys taking their defaults, or their legacy
    # meaning: a task without hed_autocast predates it, so HED ran in float32) still load
    assert config_from(TaskConfig, {"name": "superres", "size": 32, "factor": 8, "hed_scale": 2}, "c.json") == \
        TaskConfig(name="superres", size=32, factor=8, hed_autocast="off")
    assert config_from(TrainConfig, {"lr": 1, "perceptual_layers": "relu1_2,relu2_2"}, "c").perceptual_layers == \
        ("relu1_2", "relu2_2")


# ------------------------------------------------------------------------------------- model folders
@pytest.fixture
def model_dir(tmp_path):
    torch.set_num_threads(1)
    return make_tiny_model_dir(tmp_path / "model")


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(synthetic_photos(1, 32, seed=5)[0]).save(path)
    return path


@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "list"])
def test_damaged_model_config(model_dir, photo, tmp_path, capsys, damage):
    from pixelnn.models.loading import load_model_dir

    cfg = model_dir / "config.json"
    data, want = DAMAGES[damage]
    cfg.write_bytes(data)
    assert want in one_line_error(load_model_dir, model_dir)
    line = cli_error(capsys, ["-q", "synthesize", str(photo), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                              "--from-photo"])
    assert str(cfg) in line and want in line


def test_model_config_of_the_wrong_shape(model_dir, photo, tmp_path, capsys):
    cfg = model_dir / "config.json"
    good = json.loads(cfg.read_text())
    argv = ["-q", "synthesize", str(photo), "--model", str(model_dir), "--out", str(tmp_path / "o"), "--from-photo"]
    cfg.write_text(json.dumps({k: v for k, v in good.items() if k != "task"}))
    assert cli_error(capsys, argv).endswith(f"{cfg}: missing key 'task'")
    cfg.write_text(json.dumps({**good, "task": "superres"}))
    assert cli_error(capsys, argv).endswith(f"{cfg}: 'task' should be an object, got a string 'superres'")
    cfg.write_text(json.dumps({**good, "task": {**good["task"], "size": "32"}}))
    assert cli_error(capsys, argv).endswith(f"{cfg}: task.size should be an integer, got a string '32'")


def _flip_a_weight_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10  # in the tensor data (after the header): the file stays a valid safetensors file
    path.write_bytes(bytes(data))


def test_bit_flipped_model_weights_are_refused(model_dir, photo, tmp_path, capsys):
    from pixelnn.models.regressor import Regressor

    weights = model_dir / "regressor.safetensors"
    Regressor.load(weights)  # fine before
    _flip_a_weight_bit(weights)
    msg = one_line_error(Regressor.load, weights)
    assert msg.startswith(f"regressor weights {weights} do not match their recorded sha256 (file damaged or replaced)")
    line = cli_error(capsys, ["-q", "synthesize", str(photo), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                              "--from-photo"])
    assert "do not match their recorded sha256" in line


def test_metadata_config_that_disagrees_with_the_tensors(model_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pixelnn.models.regressor import Regressor

    weights = model_dir / "regressor.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    cfg = json.loads(meta["config"])
    save_file(tensors, str(weights), metadata={**meta, "config": json.dumps({**cfg, "base_channels": 32})})
    msg = one_line_error(Regressor.load, weights)
    assert msg.startswith(f"regressor weights {weights} do not fit the architecture their metadata describes") \
        and "of another shape" in msg, msg
    save_file(tensors, str(weights), metadata={**meta, "config": json.dumps({**cfg, "depth": 3})})
    assert "missing tensor(s)" in one_line_error(Regressor.load, weights)
    save_file(tensors, str(weights), metadata={**meta, "config": '{"base_channels": 8,'})
    assert "(metadata 'config'): not valid JSON" in one_line_error(Regressor.load, weights)
    save_file(tensors, str(weights), metadata={**meta, "config": json.dumps({**cfg, "depth": "2"})})
    assert one_line_error(Regressor.load, weights).endswith("depth should be an integer, got a string '2'")


# ------------------------------------------------------------------------------------- datasets
@pytest.fixture
def data_dir(tmp_path):
    return make_dataset(tmp_path / "data", n=8)


@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "number"])
def test_damaged_dataset_json(data_dir, model_dir, tmp_path, capsys, damage):
    from pixelnn.data.dataset import Dataset

    path = data_dir / "dataset.json"
    data, want = DAMAGES[damage]
    path.write_bytes(data)
    msg = one_line_error(Dataset, data_dir)
    assert msg.startswith(str(path)) and want in msg
    line = cli_error(capsys, ["-q", "index", str(data_dir), "--model", str(model_dir), "--out", str(tmp_path / "lib")])
    assert str(path) in line and want in line


def test_dataset_json_of_the_wrong_shape(data_dir):
    from pixelnn.data.dataset import Dataset

    path = data_dir / "dataset.json"
    good = json.loads(path.read_text())
    for bad, want in [({k: v for k, v in good.items() if k != "task"}, "missing key 'task'"),
                      ({**good, "task": {**good["task"], "factor": "8"}}, "task.factor should be an integer"),
                      ({**good, "version": "1"}, "'version' should be an integer")]:
        path.write_text(json.dumps(bad))
        assert want in one_line_error(Dataset, data_dir)


def test_damaged_dataset_split_files(data_dir, model_dir, tmp_path, capsys):
    from pixelnn.data.dataset import Dataset

    ds = Dataset(data_dir)
    records = data_dir / "train" / "records.jsonl"
    good = records.read_bytes()
    records.write_bytes(good[: len(good) // 2 + 5])
    assert "not valid JSON" in one_line_error(ds.split, "train")
    records.write_bytes(good + b"[1]\n")
    assert "expected an object, got a list" in one_line_error(ds.split, "train")
    records.write_bytes(good + b'{"id": "extra"}\n')
    assert "rows but records.jsonl" in one_line_error(ds.split, "train")
    records.write_bytes(good)
    photos = data_dir / "train" / "photos.npy"
    full = photos.read_bytes()
    photos.write_bytes(full[: len(full) // 2])
    msg = one_line_error(ds.split, "train")
    assert str(photos) in msg
    line = cli_error(capsys, ["-q", "index", str(data_dir), "--model", str(model_dir), "--out", str(tmp_path / "lib")])
    assert str(photos) in line
    np.save(photos, np.zeros((4, 16, 16, 3), np.uint8))
    assert "expected uint8[N, 32, 32, 3]" in one_line_error(ds.split, "train")
    photos.unlink()
    assert one_line_error(ds.split, "train").endswith(f"{photos} is missing")


# ------------------------------------------------------------------------------------- libraries
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model with a version-1 library (``model/library``) and a chunked store (``store``), built once."""
    from pixelnn.indexing import index_command

    root = tmp_path_factory.mktemp("built")
    model, data = make_tiny_library(root)
    index_command(data, model, out=root / "store", progress=False, device="cpu")
    return root, model, data


@pytest.fixture
def copy(built, tmp_path):
    root, model, data = built
    shutil.copytree(model, tmp_path / "model")
    shutil.copytree(root / "store", tmp_path / "store")
    return tmp_path / "model", data, tmp_path / "store"


@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "list"])
def test_damaged_library_json(copy, capsys, damage):
    from pixelnn.library import ExemplarLibrary

    model, _, _ = copy
    lib = model / "library"
    data, want = DAMAGES[damage]
    (lib / "library.json").write_bytes(data)
    assert want in one_line_error(ExemplarLibrary.open, lib)
    line = cli_error(capsys, ["-q", "library", "info", str(lib)])
    assert str(lib / "library.json") in line and want in line


def test_library_json_of_the_wrong_shape(copy):
    from pixelnn.library import ExemplarLibrary

    model, _, _ = copy
    path = model / "library" / "library.json"
    good = json.loads(path.read_text())
    for bad, want in [({**good, "shards": {"0000": 1}}, "'shards' should be a list, got an object"),
                      ({**good, "count": "20"}, "'count' should be an integer"),
                      ({**good, "task": {**good["task"], "size": [32]}}, "task.size should be an integer"),
                      ({**good, "shards": [{"count": 20}]}, "shards[0]: missing key 'name'"),
                      ({k: v for k, v in good.items() if k != "descriptor"}, "missing key 'descriptor'")]:
        path.write_text(json.dumps(bad))
        msg = one_line_error(ExemplarLibrary.open, path.parent)
        assert str(path) in msg and want in msg, (want, msg)


def test_damaged_library_shard(copy, capsys):
    from pixelnn.library import ExemplarLibrary

    model, _, _ = copy
    shard = model / "library" / "shards" / "0000"
    records = shard / "records.jsonl"
    records.write_bytes(records.read_bytes()[:-30])
    msg = one_line_error(ExemplarLibrary.open, model / "library")
    assert str(records) in msg and "not valid JSON" in msg
    assert str(records) in cli_error(capsys, ["-q", "library", "info", str(model / "library")])
    records.unlink()
    assert str(records) in one_line_error(ExemplarLibrary.open, model / "library")
    (shard / "stage1.npy").unlink()
    assert "stage1.npy is missing" in one_line_error(ExemplarLibrary.open, model / "library")


def test_bit_flipped_library_weights_are_refused(copy, capsys):
    from pixelnn.library import ExemplarLibrary

    model, data, _ = copy
    lib = ExemplarLibrary.open(model / "library")
    lib.load_model()  # fine before
    _flip_a_weight_bit(model / "library" / "regressor.safetensors")
    msg = one_line_error(lib.load_model)
    assert msg.startswith(f"weights {model / 'library' / 'regressor.safetensors'} do not match their recorded sha256 "
                          f"(file damaged or replaced); ")
    more = make_dataset(model.parent / "more", n=8, seed=4, prefix="m")
    line = cli_error(capsys, ["-q", "index", str(more), "--model", str(model), "--out", str(model / "library")])
    assert "do not match their recorded sha256" in line


def test_bit_flipped_store_weights_are_refused(copy, capsys):
    from pixelnn.zarr_store import ZarrLibrary

    _, _, store = copy
    lib = ZarrLibrary.open(store)
    lib.load_model()
    _flip_a_weight_bit(store / "model" / "regressor.safetensors")
    assert "do not match their recorded sha256 (file damaged or replaced)" in one_line_error(lib.load_model)
    assert "model/regressor.safetensors has a bad checksum" in lib.verify()
    capsys.readouterr()
    assert main(["-q", "library", "verify", str(store)]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "list"])
def test_damaged_store_json(copy, capsys, damage):
    _, _, store = copy
    data, want = DAMAGES[damage]
    (store / "store.json").write_bytes(data)
    line = cli_error(capsys, ["-q", "library", "info", str(store)])
    assert "store.json" in line and want in line


def test_store_version_manifest_of_the_wrong_shape(copy, capsys):
    from pixelnn.zarr_store import ZarrLibrary

    _, _, store = copy
    path = sorted((store / "versions").glob("*.json"))[-1]
    good = json.loads(path.read_text())
    for bad, want in [({**good, "segments": "all"}, "'segments' should be a list"),
                      ({**good, "segments": [{"name": "x"}]}, "missing key 'count'"),
                      ({k: v for k, v in good.items() if k != "index"}, "missing key 'index'")]:
        path.write_text(json.dumps(bad))
        assert want in one_line_error(ZarrLibrary.open, store)
    path.write_text('{"format": ')
    assert "not valid JSON" in cli_error(capsys, ["-q", "library", "info", str(store)])


# ------------------------------------------------------------------------------------- pixel cache
def test_nan_and_wrong_shape_cache_entries_are_recomputed(tmp_path, caplog):
    from pixelnn.pixel_cache import PixelDescriptorCache

    from .test_pixel_cache import CountingDescriptor

    images = synthetic_photos(3, size=16, seed=11)
    desc = CountingDescriptor()
    cache = PixelDescriptorCache(tmp_path, desc)
    expected = cache(images)
    good = np.load(cache.path(images[0]))
    bad_nan = good.copy()
    bad_nan[5, 2] = np.nan
    np.save(cache.path(images[0]), bad_nan)
    np.save(cache.path(images[1]), good[:100])  # (100, 8) instead of (256, 8)
    np.save(cache.path(images[2]), good.astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="pixelnn.pixel_cache"):
        again = cache(images)
    assert torch.equal(again, expected)  # never the bad values
    assert desc.images == 6  # all three recomputed
    assert "NaN" in caplog.text and "(100, 8)" in caplog.text and "float32" in caplog.text
    for im in images:  # rewritten good
        a = np.load(cache.path(im))
        assert a.shape == good.shape and a.dtype == np.float16 and np.isfinite(a).all()
    cache(images)
    assert desc.images == 6


# ------------------------------------------------------------------------------------- other JSON files
@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "list"])
def test_damaged_options_file(model_dir, photo, tmp_path, capsys, damage):
    path = tmp_path / "options.json"
    data, want = DAMAGES[damage]
    path.write_bytes(data)
    line = cli_error(capsys, ["-q", "synthesize", str(photo), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                              "--options", str(path)])
    assert str(path) in line and want in line


def test_options_file_of_the_wrong_type(model_dir, photo, tmp_path, capsys):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"format": "pixelnn-options", "top_k": [3]}))
    line = cli_error(capsys, ["-q", "synthesize", str(photo), "--model", str(model_dir), "--out", str(tmp_path / "o"),
                              "--options", str(path)])
    assert str(path) in line


@pytest.mark.parametrize("damage", ["empty", "truncated", "binary", "list"])
def test_damaged_evaluation_metrics(tmp_path, capsys, damage):
    ev = tmp_path / "eval"
    ev.mkdir()
    data, want = DAMAGES[damage]
    (ev / "metrics.json").write_bytes(data)
    line = cli_error(capsys, ["-q", "report", str(ev), "--out", str(tmp_path / "pages")])
    assert str(ev / "metrics.json") in line and want in line


def test_evaluation_metrics_of_the_wrong_shape(tmp_path, capsys):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"format": "pixelnn-evaluation", "methods": [1, 2]}))
    line = cli_error(capsys, ["-q", "report", str(ev), "--out", str(tmp_path / "pages")])
    assert line.endswith(f"{ev / 'metrics.json'}: 'methods' should be an object, got a list [1, 2]")


def test_binary_list_file(model_dir, tmp_path, capsys):
    lst = tmp_path / "inputs.txt"
    lst.write_bytes(b"\xff\xd8\xff\xe0binary")
    line = cli_error(capsys, ["-q", "synthesize", str(lst), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert str(lst) in line and "not UTF-8" in line
