"""``prepare`` bounds what it reads and holds (issue 15, part 4): zip bombs, oversize members, lying headers, and
options that would need unbounded memory (docs/reliability.md, "Resources are bounded").

Every zip here is written 1 MiB at a time, so the tests themselves stay small in memory.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.config import MAX_HED_SIDE, TaskConfig
from pixelnn.data.images import TOO_LARGE, UnusableImage
from pixelnn.data.prepare import prepare_dataset
from pixelnn.data.sources import (DEFAULT_MAX_FILE_BYTES, MAX_COMPRESSION_RATIO, RATIO_CHECK_BYTES, READ_CHUNK,
                                  open_source)
from pixelnn.errors import PixelNNError

from .conftest import synthetic_photos

TASK = TaskConfig(name="superres", size=16, factor=4)
SRC = Path(__file__).resolve().parents[1] / "src"


def add_zeros(z: zipfile.ZipFile, name: str, mib: float, level: int = 1) -> None:
    """A member ``name`` of ``mib`` MiB of zeros, streamed (deflate ``level``: 1 is fast, ~200 to 1 on zeros)."""
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    for attr in ("_compresslevel", "compress_level"):  # what z.open(info) uses (the name differs by Python)
        if attr in type(info).__slots__:
            setattr(info, attr, level)
    chunk = bytes(2**20)
    with z.open(info, "w") as f:
        for _ in range(int(mib)):
            f.write(chunk)
        f.write(bytes(int((mib % 1) * 2**20)))


def png(seed: int, side: int = 32, noise: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) if noise else synthetic_photos(1, side, seed)[0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def peak_traced(fn) -> tuple[int, object]:
    """(peak bytes Python allocated while ``fn`` ran, its result or the exception it raised)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 (returned for the test to check)
            out = e
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------ reading a source
def test_a_member_over_the_limit_is_refused_unread(tmp_path):
    z = tmp_path / "big.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("big.png", png(0, 128, noise=True))  # ~49 KB, stored as it is (ratio 1)
    with open_source(z) as src:
        peak, err = peak_traced(lambda: src.read("big.png", max_bytes=10_000))
    assert isinstance(err, UnusableImage) and err.reason == TOO_LARGE, err
    assert "more than the limit of 10000" in str(err)
    assert peak < 100_000  # the header said so: nothing was inflated


def test_a_zip_bomb_member_is_refused_from_its_compression_ratio(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w") as zf:
        add_zeros(zf, "bomb.png", 8, level=9)  # 8 MiB in ~8 KB: 1,000 to 1, under the 64 MiB size limit
        add_zeros(zf, "blank.png", 1, level=9)  # as extreme, but under RATIO_CHECK_BYTES: read (it is small)
    with open_source(z) as src:
        info = src._zip_names["bomb.png"]
        assert info.file_size > RATIO_CHECK_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
        assert info.file_size < DEFAULT_MAX_FILE_BYTES
        peak, err = peak_traced(lambda: src.read("bomb.png"))
        assert isinstance(err, UnusableImage) and err.reason == TOO_LARGE, err
        assert "zip bomb" in str(err) and "\n" not in str(err)
        assert peak < 1_000_000
        assert len(src.read("blank.png")) == 2**20


def _understate(zip_path: Path, name: str, claimed: int) -> None:
    """Rewrite a stored zip so that member ``name`` claims ``claimed`` bytes inflated (local and central headers)."""
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, claimed)  # local header: uncompressed size
    central = data.index(b"PK\x01\x02")
    while data[central + 46:central + 46 + struct.unpack_from("<H", data, central + 28)[0]] != name.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, claimed)  # central directory: uncompressed size
    zip_path.write_bytes(bytes(data))


def test_a_lying_header_never_gets_more_than_it_claims(tmp_path):
    """A member that claims 1 MiB but inflates to 40 MiB: read up to 1 MiB, then refused (its CRC fails)."""
    z = tmp_path / "liar.zip"
    with zipfile.ZipFile(z, "w") as zf:
        add_zeros(zf, "liar.png", 40)
    _understate(z, "liar.png", 2**20)
    with open_source(z) as src:
        assert src.file_size("liar.png") == 2**20
        peak, err = peak_traced(lambda: src.read("liar.png"))
    assert isinstance(err, zipfile.BadZipFile), err  # prepare counts it "corrupt"
    assert peak < 4 * 2**20  # the claimed MiB (and a chunk), not 40
    report = prepare_dataset(_with_photos(tmp_path / "liar2.zip", z), tmp_path / "out", TASK, fit="crop",
                             progress=False)
    assert report.skipped == {"corrupt": 1} and report.total == 3


def _with_photos(path: Path, base: Path | None = None, n: int = 3) -> Path:
    """A copy of zip ``base`` (or a new zip) with ``n`` good photos added."""
    if base is not None:
        path.write_bytes(base.read_bytes())
    with zipfile.ZipFile(path, "a" if base is not None else "w") as zf:
        for i in range(n):
            zf.writestr(f"ok{i}.png", png(i))
    return path


def test_a_folder_file_that_grew_since_it_was_listed_is_read_no_further_than_the_limit(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.png").write_bytes(png(0))
    with open_source(d) as src:
        (d / "a.png").write_bytes(bytes(5 * READ_CHUNK))  # grew to 5 MiB after the listing
        peak, err = peak_traced(lambda: src.read("a.png", max_bytes=READ_CHUNK + 10))
        assert isinstance(err, UnusableImage) and err.reason == TOO_LARGE, err
        assert peak < 3 * READ_CHUNK
        assert len(src.read("a.png", max_bytes=5 * READ_CHUNK)) == 5 * READ_CHUNK  # at the limit: read


def test_prepare_skips_oversize_members_and_bombs_and_keeps_the_photos(tmp_path):
    z = tmp_path / "mixed.zip"
    with zipfile.ZipFile(z, "w") as zf:
        add_zeros(zf, "bomb.png", 6, level=9)  # refused by its ratio
        zf.writestr("big.png", png(9, 300, noise=True))  # ~270 KB: over max_file_bytes below
    _with_photos(z, z)
    report = prepare_dataset(z, tmp_path / "out", TASK, fit="crop", progress=False, max_file_bytes=200_000)
    assert report.total == 3 and report.skipped == {"too large": 2}


# ------------------------------------------------------------------------------------------ the CLI on a zip bomb
def _child_peak_rss(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """``pixelnn ARGV`` in a child process: (exit status, stderr, its peak RSS in MiB from ``os.wait4``)."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    with open(cwd / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pixelnn.cli", *argv], stdout=subprocess.DEVNULL, stderr=err,
                                env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss / 1024


def test_prepare_on_a_zip_bomb_stays_small_in_memory(tmp_path):
    """Two 100 MiB members of zeros in ~1 MB: on main (256 MiB file limit, whole members read by 4 threads) prepare
    held them, peak RSS +200 MiB or more; now they are refused unread and the peak is that of two small photos."""
    small = _with_photos(tmp_path / "small.zip", n=2)
    rc, err, base = _child_peak_rss(["-q", "prepare", str(small), "--out", str(tmp_path / "o1"), "--task", "superres",
                                     "--size", "16", "--factor", "4"], tmp_path)
    assert rc == 0, err
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w") as zf:
        for i in range(2):
            add_zeros(zf, f"bomb-{i}.png", 100)
    assert bomb.stat().st_size < 2e6
    rc, err, peak = _child_peak_rss(["-q", "prepare", str(bomb), "--out", str(tmp_path / "o2"), "--task", "superres",
                                     "--size", "16", "--factor", "4"], tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "no usable images" in lines[0] and "skipped 2 too large" in lines[0]
    assert peak < base + 64, (peak, base)


# ------------------------------------------------------------------------------------------ options and memory
def test_hed_on_images_over_the_side_limit_is_refused_before_any_work(tmp_path):
    task = TaskConfig(name="edges", size=1024, edge_method="hed", hed_scale=4)
    with pytest.raises(PixelNNError, match=f"HED would run on 4096 x 4096 images .* the limit is {MAX_HED_SIDE}"):
        prepare_dataset(tmp_path / "no-such-source", tmp_path / "out", task, progress=False)
    # canny, or HED within the limit, go on (to the missing source)
    for task in (TaskConfig(name="edges", size=1024, edge_method="canny", hed_scale=4),
                 TaskConfig(name="edges", size=1024, edge_method="hed", hed_scale=2)):
        with pytest.raises(PixelNNError, match="does not exist"):
            prepare_dataset(tmp_path / "no-such-source", tmp_path / "out", task, progress=False)


def test_cli_hed_side_limit_is_one_line(tmp_path, capsys):
    from pixelnn.cli import main

    rc = main(["prepare", str(tmp_path), "--out", str(tmp_path / "o"), "--task", "edges", "--size", "4096",
               "--hed-scale", "8"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("pixelnn prepare: error: HED would run on 32768 x 32768 images")


def test_photos_that_would_not_fit_in_memory_are_a_one_line_error(tmp_path):
    z = _with_photos(tmp_path / "p.zip", n=6)
    photo = TASK.size * TASK.size * 3
    with pytest.raises(PixelNNError, match="the photos would not fit in memory: 4 fitted 16x16 photos") as e:
        prepare_dataset(z, tmp_path / "out", TASK, fit="crop", progress=False, max_memory=3 * photo + 10)
    assert "--limit" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    assert prepare_dataset(z, tmp_path / "out", TASK, fit="crop", progress=False, max_memory=6 * photo).total == 6


def test_hed_batches_hold_a_bounded_number_of_pixels(monkeypatch):
    """HED passes are lowered from 16 images to what HED_BATCH_PIXELS allows, never below one image; the default
    tasks (96 x 96 and 128 x 128 photos at scale 2) keep their 16."""
    import torch

    import pixelnn.models.hed as hed
    from pixelnn.edges import HED_BATCH_PIXELS, hed_probability

    shapes = []

    def fake(x):
        shapes.append(tuple(x.shape))
        return torch.zeros((x.shape[0], 1, *x.shape[2:]))

    monkeypatch.setattr(hed, "load_hed", lambda device: fake)
    for side, scale, batch, n in ((96, 2, 16, 17), (128, 2, 16, 17), (128, 4, 4, 9), (300, 4, 1, 2)):
        shapes.clear()
        hed_probability(np.zeros((n, side, side, 3), np.uint8), scale=scale)
        assert {s[0] for s in shapes[:-1]} == {batch} and sum(s[0] for s in shapes) == n, (side, scale, shapes)
        assert batch == 1 or batch * (side * scale) ** 2 <= HED_BATCH_PIXELS
