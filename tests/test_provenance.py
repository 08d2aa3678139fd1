"""Provenance helpers (shares, pixel sources), input helpers and display helpers used by the web app."""

from __future__ import annotations

import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pixelnn.config import RegressorConfig
from pixelnn.errors import PixelNNError
from pixelnn.io import zip_dir
from pixelnn.pipeline import fit_input, input_from_drawing, load_image_file
from pixelnn.provenance import exemplar_ranks, format_labels, pixel_shares, pixel_source, top_contributors
from pixelnn.visualize import enlarge, mark_pixel


def fake_result():
    """Two 4x4 outputs over neighbours at library positions [7, 3, 9] (ranks 0, 1, 2)."""
    ex = np.array([[[7, 7, 7, 7], [7, 7, 3, 3], [7, 3, 3, 3], [9, 9, 9, 9]],
                   [[3] * 4] * 4])
    sy = np.arange(32).reshape(2, 4, 4) % 4
    sx = (np.arange(32).reshape(2, 4, 4) + 1) % 4
    sim = np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 4, 4)
    return SimpleNamespace(outputs=np.zeros((2, 4, 4, 3), np.uint8), exemplar=ex, source_y=sy, source_x=sx,
                           similarity=sim, neighbours=np.array([7, 3, 9]), neighbour_ids=["a", "b", "c"])


class FakeLibrary:
    records = [{"id": f"id{i}", "source": f"f{i}.png", "labels": {"kind": "boot" if i % 2 else "shoe"}}
               for i in range(10)]

    def records_of(self, positions):
        """The exemplar-store contract's records (pixelnn.store)."""
        return [self.records[int(p)] for p in positions]


def test_exemplar_ranks_known_answer():
    assert exemplar_ranks(np.array([[9, 7], [3, 3]]), np.array([7, 3, 9])).tolist() == [[2, 0], [1, 1]]
    with pytest.raises(ValueError):
        exemplar_ranks(np.array([5]), np.array([7, 3, 9]))


def test_pixel_shares_sorted_and_sum_to_one():
    r = fake_result()
    pos, cnt, share = pixel_shares(r.exemplar[0])
    assert pos.tolist() == [7, 3, 9] and cnt.tolist() == [7, 5, 4]  # 7 from 7, 5 from 3, 4 from 9
    assert share.sum() == pytest.approx(1.0) and share[0] == pytest.approx(7 / 16)
    pos, cnt, _ = pixel_shares(np.array([[5, 2], [5, 2]]))  # tie: lower position first
    assert pos.tolist() == [2, 5] and cnt.tolist() == [2, 2]


def test_top_contributors_with_labels():
    r = fake_result()
    tops = top_contributors(r, 0, FakeLibrary(), n=2)
    assert [(c.exemplar_id, c.rank, c.library_position, c.pixels) for c in tops] == [("a", 0, 7, 7), ("b", 1, 3, 5)]
    assert tops[0].labels == {"kind": "boot"} and tops[1].source == "f3.png"
    only = top_contributors(r, 1)
    assert len(only) == 1 and only[0].share == 1.0 and only[0].labels == {}
    with pytest.raises(PixelNNError, match="output 2 does not exist"):
        top_contributors(r, 2)


def test_pixel_source_known_answer():
    r = fake_result()
    s = pixel_source(r, 0, 2, 1, FakeLibrary())
    assert (s.library_position, s.exemplar_id, s.rank) == (3, "b", 1)
    assert (s.source_y, s.source_x) == (r.source_y[0, 2, 1], r.source_x[0, 2, 1])
    assert s.similarity == pytest.approx(float(r.similarity[0, 2, 1])) and s.labels == {"kind": "boot"}
    with pytest.raises(PixelNNError, match="outside"):
        pixel_source(r, 0, 4, 0)
    assert format_labels({"a": 1, "b": "x"}) == "a=1, b=x" and format_labels({}) == "no labels"


def test_mark_pixel_and_enlarge():
    img = np.zeros((8, 8, 3), np.uint8)
    big = enlarge(img, 3)
    assert big.shape == (24, 24, 3)
    out = mark_pixel(img, 4, 2, scale=4, color=(255, 0, 255))
    assert out.shape == (32, 32, 3)
    assert (out[16:20, 8:12] == 0).all()  # the pixel itself stays visible
    marked = np.all(out == (255, 0, 255), axis=-1)
    assert marked[16 - 8, 8:12].all()  # the square's top edge above the pixel
    assert marked[17, 0] and marked[0, 9]  # ticks reach the borders on the pixel's row and column
    assert not marked[30, 30]
    corner = mark_pixel(img, 0, 7, scale=2)  # at the border: no index errors
    assert corner.shape == (16, 16, 3)


def test_fit_input_and_drawing():
    edges = RegressorConfig(in_channels=1, input_size=8, size=8)
    canvas = np.zeros((32, 32, 4), np.uint8)  # transparent canvas ...
    canvas[:, 16:, 3] = 255  # ... with an opaque black right half
    x = input_from_drawing(canvas, edges)
    assert x.shape == (8, 8, 1) and x.dtype == np.uint8
    assert (x[:, :4] == 255).all() and (x[:, 4:] == 0).all()
    rgb = fit_input(np.full((4, 4, 3), 10, np.uint8), RegressorConfig(in_channels=3, input_size=4, size=32))
    assert rgb.shape == (4, 4, 3) and (rgb == 10).all()
    with pytest.raises(PixelNNError, match="drawing"):
        input_from_drawing(np.zeros((4, 4, 2), np.uint8), edges)


def test_load_image_file_limits(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(p)
    assert load_image_file(p, 32).shape == (32, 32, 3)
    with pytest.raises(PixelNNError, match="limit is"):
        load_image_file(p, 32, max_bytes=10)
    with pytest.raises(PixelNNError, match="too large"):
        load_image_file(p, 32, max_pixels=60 * 50 - 1)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(PixelNNError, match="corrupt"):
        load_image_file(bad, 32)


def test_zip_dir(tmp_path):
    d = tmp_path / "res"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / "sub" / "b.txt").write_text("B")
    z = zip_dir(d, tmp_path / "out" / "res.zip")
    with zipfile.ZipFile(z) as f:
        assert sorted(f.namelist()) == ["res/a.txt", "res/sub/b.txt"]
        assert f.read("res/sub/b.txt") == b"B"
