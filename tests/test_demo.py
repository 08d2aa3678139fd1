"""The demo's material (views of bundled photos) and its advice (commands that parse)."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from pixelnn.cli import build_parser
from pixelnn.demo import BUNDLED_PHOTOS, bundled_photos, next_commands, photo_view


def test_views_stay_inside_the_photo_and_are_seeded():
    image = np.full((120, 200, 3), 200, np.uint8)  # a flat photo: any fill from outside it would show as dark
    box = (15, 100, 110)  # a square that reaches past the left and bottom edges
    a = [photo_view(image, box, 48, np.random.default_rng(3)) for _ in range(2)]
    assert a[0].shape == (48, 48, 3) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[0], a[1])
    rng = np.random.default_rng(0)
    for _ in range(40):
        v = photo_view(image, box, 48, rng)
        assert v.min() >= 200 * 0.92 * 0.92 - 1 and v.max() <= 200 * 1.08 + 1


def test_views_differ_between_draws():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    v1, v2 = photo_view(image, (80, 80, 100), 32, rng), photo_view(image, (80, 80, 100), 32, rng)
    assert np.abs(v1.astype(int) - v2.astype(int)).mean() > 5


def test_the_core_dependencies_bundle_faces_and_objects():
    found = {p.name: im for p, im in bundled_photos()}
    # scikit-image and matplotlib are core dependencies: their photos are always there
    assert {"astronaut", "grace_hopper", "chelsea", "coffee", "motorcycle"} <= set(found)
    for p in BUNDLED_PHOTOS:
        if p.name in found:
            h, w = found[p.name].shape[:2]
            cx, cy, side = p.box
            assert 0 < cx < w and 0 < cy < h and side <= min(h, w), p.name


@pytest.mark.parametrize("what,command", next_commands())
def test_next_commands_parse(what, command):
    argv = shlex.split(command)
    assert argv[0] == "pixelnn"
    args = build_parser().parse_args(argv[1:])  # argparse exits on an unknown option
    assert callable(args.func), what
