"""Back-projection (issue 16, part 2): every output's area downsampling equals the superres input exactly."""

import numpy as np
import pytest

from pixelnn.compose import back_project
from pixelnn.errors import PixelNNError
from pixelnn.tasks import area_downsample


def test_back_projection_is_exact_even_at_saturated_blocks_and_idempotent():
    rng = np.random.default_rng(0)
    outputs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    outputs[0], outputs[1] = 255, 0  # blocks that must move against their clipping
    x = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    x[0, 0], x[1, 1], x[2, 2] = 255, 0, (1, 254, 128)
    got = back_project(outputs, x, 8)
    assert got.dtype == np.uint8 and got.shape == outputs.shape
    assert (area_downsample(got, 8) == x[None]).all()
    assert np.array_equal(back_project(got, x, 8), got)  # already consistent: unchanged


def test_an_unclipped_block_is_shifted_uniformly():
    """Away from 0 and 255 each block moves by one integer per channel (+ at most one unit per pixel): its
    high frequencies stay."""
    rng = np.random.default_rng(1)
    outputs = rng.integers(60, 190, (3, 16, 16, 3), dtype=np.uint8)
    x = rng.integers(80, 170, (2, 2, 3), dtype=np.uint8)
    got = back_project(outputs, x, 8).astype(int)
    diff = got - outputs.astype(int)  # (3, 16, 16, 3)
    blocks = diff.reshape(3, 2, 8, 2, 8, 3)
    spread = blocks.max(axis=(2, 4)) - blocks.min(axis=(2, 4))
    assert (spread <= 1).all()
    mean_moved = blocks.mean(axis=(2, 4))
    want = x[None].astype(float) - outputs.reshape(3, 2, 8, 2, 8, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(mean_moved, want, atol=1e-9)  # the block's mean lands exactly on x


def test_already_consistent_outputs_and_bad_shapes():
    x = np.full((2, 2, 3), 100, np.uint8)
    same = np.full((1, 8, 8, 3), 100, np.uint8)
    assert np.array_equal(back_project(same, x, 4), same)
    with pytest.raises(PixelNNError, match="do not downsample"):
        back_project(same, np.zeros((3, 3, 3), np.uint8), 4)
