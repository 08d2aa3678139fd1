"""The exemplar pixel-descriptor cache: content-addressed, exact, robust to bad entries."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pixelnn.data.dataset import Dataset
from pixelnn.descriptors import PixelPCA
from pixelnn.library import ExemplarLibrary
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.pixel_cache import PixelDescriptorCache, descriptor_fingerprint, round_descriptors

from .conftest import make_dataset, make_tiny_model_dir, synthetic_photos


class CountingDescriptor:
    """A cheap stand-in descriptor: per-pixel colour + position features, unit-normalised."""

    name = "fake"
    dims = 8
    takes = "stage1"

    def __init__(self, pca=None):
        self.pca = pca
        self.calls = 0
        self.images = 0

    def __call__(self, images):
        self.calls += 1
        self.images += len(images)
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255  # (N, H, W, 3)
        n, h, w, _ = x.shape
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        feats = torch.cat([x, x ** 2, yy.expand(n, h, w)[..., None], xx.expand(n, h, w)[..., None]], dim=-1)
        return torch.nn.functional.normalize(feats.reshape(n, h * w, 8) + 1e-3, dim=-1)


def test_cache_returns_rounded_descriptors_and_reuses_them(tmp_path):
    images = synthetic_photos(5, size=16, seed=1)
    desc = CountingDescriptor()
    cache = PixelDescriptorCache(tmp_path, desc)
    first = cache(images)
    expected = round_descriptors(CountingDescriptor()(images))
    assert torch.equal(first, expected)
    assert (cache.hits, cache.misses, desc.images) == (0, 5, 5)
    again = cache(images[[3, 1]])  # read back, not recomputed
    assert torch.equal(again, expected[[3, 1]])
    assert (cache.hits, desc.images) == (2, 5)
    # a new image is described once; a fresh cache object on the same folder finds everything
    more = synthetic_photos(1, size=16, seed=9)
    cache(np.concatenate([images[:1], more]))
    assert desc.images == 6
    desc2 = CountingDescriptor()
    assert torch.equal(PixelDescriptorCache(tmp_path, desc2)(images), expected) and desc2.images == 0


def test_keys_follow_content_and_descriptor(tmp_path):
    a, b = synthetic_photos(2, size=16, seed=2)
    cache = PixelDescriptorCache(tmp_path, CountingDescriptor())
    assert cache.key(a) != cache.key(b) and cache.key(a) == cache.key(a.copy())
    pca1 = PixelPCA(torch.zeros(4), torch.eye(4)[:, :2], torch.ones(2), 4.0, source="x", channels=(4,))
    pca2 = PixelPCA(torch.ones(4) * 0.1, torch.eye(4)[:, :2], torch.ones(2), 4.0, source="x", channels=(4,))
    f0 = descriptor_fingerprint(CountingDescriptor())
    f1 = descriptor_fingerprint(CountingDescriptor(pca1))
    f2 = descriptor_fingerprint(CountingDescriptor(pca2))
    assert len({f0, f1, f2}) == 3  # a refitted PCA never reads the old entries
    assert PixelDescriptorCache(tmp_path, CountingDescriptor(pca1)).dir != PixelDescriptorCache(tmp_path, CountingDescriptor(pca2)).dir


def test_corrupt_entry_is_recomputed(tmp_path, caplog):
    images = synthetic_photos(2, size=16, seed=3)
    desc = CountingDescriptor()
    cache = PixelDescriptorCache(tmp_path, desc)
    expected = cache(images)
    cache.path(images[0]).write_bytes(b"not a numpy file")
    assert torch.equal(cache(images), expected)
    assert desc.images == 3 and "unreadable" in caplog.text
    assert np.load(cache.path(images[0])).dtype == np.float16  # rewritten


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_cache_still_serves(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        images = synthetic_photos(2, size=16, seed=4)
        cache = PixelDescriptorCache(ro, CountingDescriptor())
        assert torch.equal(cache(images), round_descriptors(CountingDescriptor()(images)))
        assert not cache.writable
    finally:
        ro.chmod(0o755)


def test_unwritable_cache_folder_still_serves(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    images = synthetic_photos(2, size=16, seed=5)
    cache = PixelDescriptorCache(blocker, CountingDescriptor())
    assert torch.equal(cache(images), round_descriptors(CountingDescriptor()(images)))
    assert not cache.writable


def test_fill_then_pipeline_matches_uncached(tmp_path):
    torch.set_num_threads(1)
    model = make_tiny_model_dir(tmp_path / "model")
    data = make_dataset(tmp_path / "data", n=20, seed=0)
    ExemplarLibrary.build(None, model, [data], progress=False)
    plain = PixelNNPipeline.from_model_dir(model, pca_dims=16, pixel_cache=False)
    cached = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    assert plain.pixel_cache is None and cached.pixel_cache is not None
    x = np.asarray(Dataset(data).split("val").inputs[0])
    ref = plain(x, top_k=11)
    cold = cached(x, top_k=11)  # computes and stores the 11 neighbours
    assert cached.pixel_cache.misses == 11
    filled = cached.fill_pixel_cache(progress=False)
    assert filled == len(cached.library) - 11
    warm = cached(x, top_k=11)
    assert cached.pixel_cache.hits == 11
    for r in (cold, warm):
        assert np.array_equal(r.outputs, ref.outputs)
        assert np.array_equal(r.exemplar, ref.exemplar) and np.array_equal(r.source_y, ref.source_y)
        assert np.array_equal(r.similarity, ref.similarity)
