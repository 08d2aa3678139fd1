"""Disk use you can see (issue 18): the caches PixelNN writes, their sizes in ``index`` and ``synthesize``,
``pixelnn cache info|clear``, and the pixel cache's growth warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn import caches
from pixelnn.cli import main
from pixelnn.errors import PixelNNError
from pixelnn.pixel_cache import PixelDescriptorCache

from .conftest import make_dataset, make_tiny_library, make_tiny_model_dir, synthetic_photos
from .test_pixel_cache import CountingDescriptor


@pytest.fixture(autouse=True)
def shared_cache(tmp_path, monkeypatch):
    """A shared cache folder of the test's own, so that nothing touches ~/.cache/pixelnn."""
    d = tmp_path / "shared-cache"
    monkeypatch.setenv("PIXELNN_CACHE", str(d))
    return d


def fake_entries(lib: Path, n: int = 3, size: int = 1000) -> Path:
    """``n`` pixel-cache entries of ``size`` bytes, named as PixelDescriptorCache names them."""
    folder = lib / "pixel_cache" / "vgg16-hypercolumn-pca64-0123456789abcdef"
    for i in range(n):
        key = f"{i:02x}" + "0" * 38
        (folder / key[:2]).mkdir(parents=True, exist_ok=True)
        (folder / key[:2] / f"{key}.npy").write_bytes(b"x" * size)
    return folder


def test_format_size_and_tree_size(tmp_path):
    assert [caches.format_size(n) for n in (0, 512, 12_600, 5 * 2**20, 3 * 2**30 + 2**29)] == [
        "0 B", "512 B", "12.3 KiB", "5.0 MiB", "3.50 GiB"]
    assert caches.tree_size(tmp_path / "absent") == (0, 0)
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"1" * 10)
    (tmp_path / "d" / "e" / "b").write_bytes(b"1" * 5)
    (tmp_path / "big").write_bytes(b"1" * 100)
    os.symlink(tmp_path / "big", tmp_path / "d" / "link")  # not followed, not counted
    assert caches.tree_size(tmp_path / "d") == (15, 2)


@pytest.mark.parametrize("action", ["info", "clear"])
def test_bad_targets_are_one_line_errors(tmp_path, capsys, action):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for target, msg in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file.txt", "is a file"),
                        (tmp_path / "empty", "is neither a model folder with a library nor a library folder")):
        assert main(["cache", action, str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and "Traceback" not in err, err
        assert err.startswith(f"pixelnn cache: error: ")
    assert main(["cache", "clear"]) == 2
    assert "needs a model or library folder, or --shared" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["cache", "list", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'list' (choose from 'info', 'clear')" in capsys.readouterr().err


def test_info_and_clear_of_a_library(tmp_path, capsys, shared_cache):
    model, _ = make_tiny_library(tmp_path)
    lib = model / "library"
    folder = fake_entries(lib, n=3, size=1000)
    (folder / "00" / "README").write_text("mine")  # not PixelNN's: left where it is
    (lib / "pca_hypercolumn_64.safetensors").write_bytes(b"p" * 200)
    (shared_cache / "inception").mkdir(parents=True)
    (shared_cache / "inception" / ("ab" * 16 + ".npy")).write_bytes(b"f" * 300)
    (shared_cache / "lpips_alexnet.safetensors").write_bytes(b"w" * 50)

    assert main(["cache", "info", str(model)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"pixel cache: {folder}: 2.9 KiB in 4 files, descriptor vgg16-hypercolumn-pca64")
    assert out[1] == f"PCA fit: {lib / 'pca_hypercolumn_64.safetensors'}: 200 B in 1 file (kept by clear)"
    assert out[2] == f"Inception features: {shared_cache / 'inception'}: 300 B in 1 file, evaluate's real photos"
    assert out[3].startswith(f"converted weights: {shared_cache}: 50 B in 1 file, lpips_alexnet.safetensors")
    assert out[-1] == "total 3.5 KiB; `pixelnn cache clear` frees 2.9 KiB, with --shared 3.2 KiB"
    assert main(["cache", "info", str(lib)]) == 0  # the library folder itself: the same
    assert capsys.readouterr().out.splitlines() == out
    assert main(["cache", "info"]) == 0  # no target: the shared caches only
    assert capsys.readouterr().out.splitlines() == out[2:-1] + ["total 350 B; `pixelnn cache clear --shared` frees 300 B"]

    assert main(["cache", "clear", str(model)]) == 0
    line = capsys.readouterr().out
    assert line == f"freed 2.9 KiB: removed 3 cache files from {lib / 'pixel_cache'}; left 1 file PixelNN did not write\n"
    assert sorted(p.name for p in folder.rglob("*")) == ["00", "README"]
    assert (lib / "pca_hypercolumn_64.safetensors").is_file()  # the PCA is not a cache to drop
    assert (shared_cache / "inception").is_dir()  # only with --shared
    assert main(["cache", "clear", "--shared"]) == 0
    assert capsys.readouterr().out.startswith("freed 300 B: removed 1 cache file from")
    assert not (shared_cache / "inception").exists() and (shared_cache / "lpips_alexnet.safetensors").is_file()
    assert main(["cache", "clear", str(model)]) == 0  # again: nothing left to free
    assert capsys.readouterr().out.startswith("freed 0 B: removed 0 cache files")


def test_clear_never_follows_a_symlink(tmp_path, capsys):
    model, _ = make_tiny_library(tmp_path)
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / ("0" * 40 + ".npy")).write_bytes(b"keep")
    folder = fake_entries(model / "library", n=1)
    os.symlink(elsewhere, folder / "11")
    assert main(["cache", "clear", str(model)]) == 0
    assert (elsewhere / ("0" * 40 + ".npy")).read_bytes() == b"keep"
    assert "removed 1 cache file" in capsys.readouterr().out


def test_index_and_synthesize_report_the_cache(tmp_path, capsys):
    # a version-1 library (make_tiny_library) keeps a pixel cache, filled by synthesize
    model, data = make_tiny_library(tmp_path)
    Image.fromarray(synthetic_photos(1, 4, seed=5)[0]).save(tmp_path / "x.png")
    argv = ["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "res"),
            "--device", "cpu", "--pca-dims", "16", "--sets", "1,2", "--windows", "1,whole"]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    size = caches.tree_size(model / "library" / "pixel_cache")[0]
    assert size > 0 and last.endswith(f"; pixel cache {caches.format_size(size)} in {model / 'library' / 'pixel_cache'}")
    assert main(argv + ["--no-pixel-cache", "--overwrite"]) == 0
    assert "pixel cache" not in capsys.readouterr().out
    assert main(["-q", "index", str(data), "--model", str(model)]) == 0  # the version-1 library, updated
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"caches: pixel cache {caches.format_size(size)} in {model / 'library' / 'pixel_cache'}")
    assert "PCA fits" in out[-1]  # 64 dims (the default, fitted when the pipeline opened) and 16
    # a chunked store (the default of a new library) keeps none
    m2 = make_tiny_model_dir(tmp_path / "m2")
    assert main(["-q", "index", str(data), "--model", str(m2), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("caches: no pixel cache (a chunked store")
    assert main(["cache", "info", str(m2)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("none: a chunked store describes exemplars per query")


def test_pixel_cache_warns_once_per_step_of_growth(tmp_path, caplog):
    cache = PixelDescriptorCache(tmp_path / "pc", CountingDescriptor())
    cache.warn_every = 10_000  # an entry of a 16x16 image at 8 dims: 4,224 bytes
    with caplog.at_level(logging.WARNING, logger="pixelnn"):
        for seed in range(6):  # 6 entries, 25 KB: past 10 and 20 KB
            cache(synthetic_photos(1, 16, seed=seed))
    grown = [r.getMessage() for r in caplog.records if "has grown to" in r.getMessage()]
    assert len(grown) == 2 and all("`pixelnn cache clear` frees it" in m and "\n" not in m for m in grown)
    assert "has grown to 12.4 KiB" in grown[0] and "has grown to 20.6 KiB" in grown[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixelnn"):  # filling it ahead of time, as asked: no warning
        cache.fill(synthetic_photos(8, 16, seed=10), progress=False)
        cache(synthetic_photos(1, 16, seed=5))  # read back: no growth
    assert not [r for r in caplog.records if "has grown" in r.getMessage()]


def test_a_cache_already_large_warns_only_when_it_grows_further(tmp_path, caplog):
    root = tmp_path / "pc"
    (root / "old").mkdir(parents=True)
    (root / "old" / "blob").write_bytes(b"x" * 15_000)
    cache = PixelDescriptorCache(root, CountingDescriptor())
    cache.warn_every = 10_000
    with caplog.at_level(logging.WARNING, logger="pixelnn"):
        cache(synthetic_photos(1, 16, seed=0))  # 15 + 4 KB: the starting size, over 10 KB already
        cache(synthetic_photos(1, 16, seed=1))  # 23.4 KB: past 20 KB
    grown = [r.getMessage() for r in caplog.records if "has grown to" in r.getMessage()]
    assert len(grown) == 1 and "22.9 KiB" in grown[0]


def test_library_root_takes_a_model_or_a_library(tmp_path):
    model, _ = make_tiny_library(tmp_path)
    assert caches.library_root(model) == model / "library" == caches.library_root(model / "library")
    with pytest.raises(PixelNNError, match="remote store keeps no cache"):
        caches.library_root("s3://bucket/lib")
    data = make_dataset(tmp_path / "d2")
    with pytest.raises(PixelNNError, match="neither a model folder"):
        caches.library_root(data)
    assert np.isfinite(caches.pixel_cache_size(model / "library"))
