"""Known-answer tests of the evaluation metrics: FID/KID, power spectra, edge faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pixelnn.evaluation import faithfulness as faith
from pixelnn.evaluation import fid as fidm
from pixelnn.evaluation import spectrum as spec
from pixelnn.tasks import area_downsample

from .conftest import synthetic_photos

# ------------------------------------------------------------------------------------------ FID / KID


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # ||mu1 - mu2||^2 + sum (sqrt(v1) - sqrt(v2))^2 = 5 + (1 + 1 + 4) = 11
    for method in ("eigh", "sqrtm"):
        d = fidm.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
        assert d == pytest.approx(11.0, abs=1e-9)


def test_frechet_distance_is_rotation_invariant_and_zero_for_equal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mu = rng.normal(size=5)
    assert fidm.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # A rotation of both Gaussians keeps the distance; a shift adds its squared length.
    d = fidm.frechet_distance(mu, sigma, mu + 1, 2 * sigma)
    d_rot = fidm.frechet_distance(q @ mu, q @ sigma @ q.T, q @ (mu + 1), q @ (2 * sigma) @ q.T)
    assert d == pytest.approx(d_rot, rel=1e-8)
    # closed form for sigma2 = 2 sigma1: tr(sigma) (1 + 2 - 2 sqrt(2))
    assert d == pytest.approx(5 + np.trace(sigma) * (3 - 2 * np.sqrt(2)), rel=1e-8)
    # the eigh route agrees with scipy's sqrtm on general (non-commuting) covariances
    b = rng.normal(size=(5, 5))
    sigma2 = b @ b.T + 0.1 * np.eye(5)
    assert fidm.frechet_distance(mu, sigma, mu, sigma2) == pytest.approx(
        fidm.frechet_distance(mu, sigma, mu, sigma2, method="sqrtm"), rel=1e-8)


def test_fid_from_features_equals_the_covariance_route():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 10)) @ rng.normal(size=(10, 10))  # fewer samples than dims: singular covariances
    b = rng.normal(size=(9, 10)) + 0.5
    expected = fidm.frechet_distance(*fidm.feature_stats(a), *fidm.feature_stats(b))
    assert fidm.fid(a, b) == pytest.approx(expected, rel=1e-6)
    c = rng.normal(size=(40, 10))  # more samples than dims: the covariance route itself
    assert fidm.fid(c, b) == pytest.approx(fidm.frechet_distance(*fidm.feature_stats(c), *fidm.feature_stats(b),
                                                                 method="sqrtm"), rel=1e-6)
    assert fidm.fid(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fid_and_kid_on_features_grow_with_a_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 8))
    b = rng.normal(size=(400, 8))
    fids = [fidm.fid(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    kids = [fidm.kid(a, b + s, subsets=20, subset_size=200)[0] for s in (0.0, 0.5, 1.0, 2.0)]
    assert fids[0] < 0.2 and abs(kids[0]) < 0.01
    assert fids == sorted(fids) and kids == sorted(kids)
    assert fids[-1] == pytest.approx(8 * 4, rel=0.15)  # mean shift of 2 in 8 dims


def test_kid_known_value_and_unbiased_near_zero_for_one_distribution():
    # x = {0, 1}, y = {0, 2}, d = 1: k = (a b + 1)^3; within-set off-diagonal terms 1 and 1,
    # cross terms (1, 1, 1, 27) -> MMD^2 = 1 + 1 - 2 * 7.5 = -13
    mean, std = fidm.kid(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]), subsets=1, subset_size=2)
    assert mean == pytest.approx(-13.0) and std == 0.0
    # cached kernel matrices and per-subset kernels give the same draws and numbers
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(25, 6)) + 0.3
    assert fidm.kid(x, y, subsets=7, subset_size=20, seed=1) == pytest.approx(
        fidm.kid(x, y, subsets=7, subset_size=20, seed=1, max_cached=0), rel=1e-9)
    rng = np.random.default_rng(2)
    vals = np.array([fidm.kid(rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), subsets=1, subset_size=40)[0]
                     for _ in range(300)])
    assert abs(vals.mean()) < 4 * vals.std() / np.sqrt(len(vals))  # the biased estimator would be clearly positive


def test_nv_bilinear_keeps_constants_and_sizes():
    x = torch.full((2, 3, 32, 40), 7.0)
    y = fidm.nv_bilinear(x, 299)
    assert y.shape == (2, 3, 299, 299) and torch.allclose(y, torch.full_like(y, 7.0))
    p = fidm.preprocess(np.full((1, 16, 16, 3), 255, np.uint8))
    assert p.shape == (1, 3, 299, 299) and float(p.max()) == pytest.approx(fidm.TF_INPUT_RANGE[1])


@pytest.mark.slow
def test_inception_fid_zero_on_itself_and_growing_with_blur():
    torch.set_num_threads(1)
    photos = synthetic_photos(10, 48, seed=3)
    feats = fidm.inception_features(photos, batch_size=10)
    assert feats.shape == (10, 2048) and np.isfinite(feats).all() and feats.min() >= 0  # pool of ReLUs
    assert np.allclose(fidm.inception_features(photos[:2]), feats[:2], atol=1e-4)  # batch-independent
    assert fidm.fid(feats, feats) == pytest.approx(0.0, abs=1e-2)
    fids, kids = [], []
    for sigma in (1.0, 3.0):
        blurred = np.stack([ndimage.gaussian_filter(p.astype(np.float32), (sigma, sigma, 0)) for p in photos])
        bf = fidm.inception_features(np.clip(blurred, 0, 255).round().astype(np.uint8), batch_size=10)
        fids.append(fidm.fid(bf, feats))
        kids.append(fidm.kid(bf, feats, subsets=20)[0])
    assert 0 < fids[0] < fids[1]
    assert kids[0] < kids[1]


def test_cached_inception_features_are_reused_and_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELNN_CACHE", str(tmp_path))
    photos = synthetic_photos(3, 16, seed=5)
    calls = []

    def fake(images, progress=False, device="cpu"):  # stands in for the network: deterministic, counted
        calls.append(len(images))
        return np.repeat(images.reshape(len(images), -1).mean(1, keepdims=True), 2048, 1).astype(np.float64)

    monkeypatch.setattr(fidm, "inception_features", fake)
    first = fidm.cached_inception_features(photos)
    again = fidm.cached_inception_features(photos)
    assert np.array_equal(first, again) and calls == [3]  # the second call read the cache
    changed = photos.copy()
    changed[0, 0, 0, 0] ^= 1
    fidm.cached_inception_features(changed)
    assert calls == [3, 3]  # one changed byte is another key
    assert len(list((tmp_path / "inception").glob("*.npy"))) == 2


# ------------------------------------------------------------------------------------------ spectra


def test_sinusoid_peaks_at_its_frequency():
    s, k = 64, 10
    xx = np.arange(s)[None, :].repeat(s, 0)
    img = 0.5 + 0.4 * np.sin(2 * np.pi * k * xx / s)
    freqs, p = spec.radial_power_spectrum(img[None])
    assert freqs.shape == (33,) and freqs[k] == pytest.approx(k / s)
    assert int(np.argmax(p[0])) == k
    assert p[0, k] > 100 * np.median(p[0])


def test_white_noise_is_flat_and_blur_removes_high_frequencies():
    rng = np.random.default_rng(0)
    noise = rng.random((200, 64, 64))
    _, p = spec.mean_spectrum(noise)
    band = p[2:]  # rings 0-1 are affected by the mean removal and the window
    assert band.max() / band.min() < 1.5
    # white noise of variance 1/12, Hann-windowed and normalised by sum(w^2): flat at the variance
    assert np.median(band) == pytest.approx(1 / 12, rel=0.1)
    blurred = ndimage.gaussian_filter(noise, (0, 1.5, 1.5))
    _, pb = spec.mean_spectrum(blurred)
    assert pb[25:].mean() < 0.01 * p[25:].mean()
    assert spec.spectral_distance(p, p) == 0
    assert spec.spectral_distance(pb, p) > 10  # dB


def test_spectral_distance_definition():
    a = np.array([5.0, 1.0, 10.0, 100.0])
    b = np.array([1.0, 10.0, 10.0, 1.0])  # DC ignored; |0 - 10|, 0, |20 - 0| dB
    assert spec.spectral_distance(a, b) == pytest.approx(10.0)


def test_uint8_rgb_and_plot(tmp_path):
    photos = synthetic_photos(4, 32)
    f, p = spec.mean_spectrum(photos)
    assert p.shape == (17,) and (p >= 0).all()
    out = spec.plot_spectra(tmp_path / "s.png", {"a": (f, p), "b": (f, p * 2)})
    assert (tmp_path / "s.png").stat().st_size > 1000 and out == tmp_path / "s.png"


# ------------------------------------------------------------------------------------------ faithfulness


def test_superres_faithfulness_of_the_photo_itself_is_infinite():
    photos = synthetic_photos(3, 32)
    small = area_downsample(photos, 8)
    assert np.isinf(faith.superres_faithfulness(photos, small, 8)).all()
    noisy = np.clip(photos.astype(int) + 40, 0, 255).astype(np.uint8)
    assert (faith.superres_faithfulness(noisy, small, 8) < 30).all()


def _line(shape=(20, 20), row=10, cols=range(5, 15)):
    m = np.zeros(shape, bool)
    m[row, list(cols)] = True
    return m


def test_identical_maps_score_one_and_disjoint_maps_zero():
    gt = _line()
    ap, f1 = faith.average_precision_f1(*faith.edge_precision_recall(gt.astype(float), gt)[1:])
    assert ap == pytest.approx(1.0) and f1 == pytest.approx(1.0)
    far = _line(row=2)
    ap, f1 = faith.average_precision_f1(*faith.edge_precision_recall(far.astype(float), gt, tolerance=1.0)[1:])
    assert ap == 0.0 and f1 == 0.0
    # a one-pixel shift: missed exactly, matched with a 1-pixel tolerance
    shifted = _line(row=11).astype(float)
    assert faith.average_precision_f1(*faith.edge_precision_recall(shifted, gt, tolerance=0)[1:]) == (0.0, 0.0)
    assert faith.average_precision_f1(*faith.edge_precision_recall(shifted, gt, tolerance=1)[1:]) == (1.0, 1.0)


def test_hand_computed_precision_recall():
    gt = _line()  # 10 true edge pixels
    score = np.zeros(gt.shape)
    score[10, 5:10] = 0.9   # half the line, strong
    score[2, 5:10] = 0.5    # five spurious pixels far away, weaker
    t, p, r = faith.edge_precision_recall(score, gt, tolerance=0)
    hi, lo = t > 0.5, (t <= 0.5)
    assert np.allclose(p[hi & (t <= 0.9)], 1.0) and np.allclose(r[hi & (t <= 0.9)], 0.5)
    assert np.allclose(p[lo], 0.5) and np.allclose(r[lo], 0.5)
    ap, f1 = faith.average_precision_f1(p, r)
    assert ap == pytest.approx(0.5)                # recall 0 -> 0.5 at precision 1
    assert f1 == pytest.approx(2 * 0.5 / 1.5)      # best at P=1, R=0.5
    aps, f1s = faith.edge_faithfulness(np.stack([score, gt.astype(float)]), np.stack([gt, gt]), tolerance=0)
    assert np.allclose(aps, [0.5, 1.0]) and np.allclose(f1s, [2 / 3, 1.0])


def test_empty_truth_gives_nan_and_input_edges_reads_strokes():
    ap, f1 = faith.average_precision_f1(*faith.edge_precision_recall(np.ones((5, 5)), np.zeros((5, 5), bool))[1:])
    assert np.isnan(ap) and np.isnan(f1)
    strokes = np.full((1, 6, 6, 1), 255, np.uint8)
    strokes[0, 2, :, 0] = 0
    e = faith.input_edges(strokes)
    assert e.shape == (1, 6, 6) and e[0, 2].all() and e.sum() == 6
    assert faith.looks_like_edge_map(strokes)
    assert not faith.looks_like_edge_map(synthetic_photos(2, 16))
