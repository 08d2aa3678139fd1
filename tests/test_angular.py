"""The paper's angular-error metrics (Tables 1-2) against naive references and known rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixelnn import normals as N
from pixelnn.evaluation import angular as A


def _random_normals(shape, seed=0):
    n = np.random.default_rng(seed).normal(size=(*shape, 3))
    n[..., 2] = np.abs(n[..., 2]) + 0.1  # facing the viewer, as a face's normals do
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _rotate_about(n, axis, degrees):
    """Rodrigues: each vector of n (..., 3) rotated about its own unit axis (..., 3)."""
    t = math.radians(degrees)
    k = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    return (n * math.cos(t) + np.cross(k, n) * math.sin(t)
            + k * np.einsum("...i,...i->...", k, n)[..., None] * (1 - math.cos(t)))


def _naive_stats(errors):
    e = sorted(float(x) for x in errors)
    k = len(e)
    median = e[k // 2] if k % 2 else (e[k // 2 - 1] + e[k // 2]) / 2
    return {"mean": sum(e) / k, "median": median, "rmse": math.sqrt(sum(x * x for x in e) / k),
            "within_11_25": 100 * sum(x <= 11.25 for x in e) / k, "within_22_5": 100 * sum(x <= 22.5 for x in e) / k,
            "within_30": 100 * sum(x <= 30 for x in e) / k, "pixels": k}


@pytest.mark.parametrize("degrees", [0.0, 5.0, 11.25, 20.0, 45.0, 90.0, 135.0, 180.0])
def test_a_rotation_perpendicular_to_every_normal_gives_its_angle_everywhere(degrees):
    n = _random_normals((12, 10))
    axis = np.cross(n, _random_normals((12, 10), seed=1))  # perpendicular to each normal
    rotated = _rotate_about(n, axis, degrees)
    np.testing.assert_allclose(A.angle_map(rotated, n), degrees, atol=1e-5)
    s = A.angular_statistics(A.angular_errors(rotated, n))
    assert s["pixels"] == 120
    assert s["mean"] == pytest.approx(degrees, abs=1e-5) and s["median"] == pytest.approx(degrees, abs=1e-5)
    assert s["rmse"] == pytest.approx(degrees, abs=1e-5)


def test_a_rotation_about_the_y_axis_of_normals_in_the_xz_plane():
    """n = (sin a, 0, cos a) rotated by t about y is (sin(a + t), 0, cos(a + t)): the angle is t."""
    a = np.radians(np.linspace(-60, 60, 50))[:, None]  # (50, 1)
    n = np.concatenate([np.sin(a), np.zeros_like(a), np.cos(a)], axis=1)  # (50, 3)
    t = math.radians(17.0)
    rot = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    np.testing.assert_allclose(A.angle_map(n @ rot.T, n), 17.0, atol=1e-6)


def test_statistics_equal_a_naive_reference_and_thresholds_are_inclusive():
    rng = np.random.default_rng(3)
    n = _random_normals((20, 20), seed=4)
    # each pixel rotated by its own angle about an axis perpendicular to it
    angles = rng.uniform(0, 50, (20, 20))
    angles[0, :4] = [11.25, 22.5, 30.0, 0.0]  # on the thresholds (up to rounding) and none
    axis = np.cross(n, _random_normals((20, 20), seed=5))
    pred = np.stack([_rotate_about(n[i, j], axis[i, j], angles[i, j]) for i in range(20) for j in range(20)])
    pred = pred.reshape(20, 20, 3)
    mask = rng.random((20, 20)) < 0.7
    mask[0, :4] = True
    err = A.angular_errors(pred, n, mask)
    # naive per-pixel reference: math.acos of the normalised dot product, pixel by pixel
    ref = [math.degrees(math.acos(max(-1.0, min(1.0, float(np.dot(pred[i, j], n[i, j])
                                                            / np.linalg.norm(pred[i, j]) / np.linalg.norm(n[i, j]))))))
           for i in range(20) for j in range(20) if mask[i, j]]
    np.testing.assert_allclose(err, ref, atol=1e-9)
    np.testing.assert_allclose(err, angles[mask], atol=1e-6)
    got, want = A.angular_statistics(err), _naive_stats(ref)
    assert got["pixels"] == want["pixels"] == mask.sum()
    for k in A.STATISTICS:
        assert got[k] == pytest.approx(want[k], abs=1e-4), k
    # the thresholds are inclusive
    exact = A.angular_statistics(np.array([11.25, 22.5, 30.0, 40.0]))
    assert (exact["within_11_25"], exact["within_22_5"], exact["within_30"]) == (25.0, 50.0, 75.0)


def test_only_pixels_inside_the_mask_where_both_fields_are_defined_are_scored():
    n = _random_normals((6, 6))
    pred = _rotate_about(n, np.cross(n, _random_normals((6, 6), 1)), 10.0)
    pred[0] = 0  # row 0: undefined in the generated image's normals
    truth = n.copy()
    truth[:, 0] = 0  # column 0: undefined in the real photo's
    mask = np.ones((6, 6), bool)
    mask[5] = False  # row 5: outside the real face mask
    err = A.angular_errors(pred, truth, mask)
    assert err.shape == (4 * 5,)  # rows 1-4, columns 1-5
    np.testing.assert_allclose(err, 10.0, atol=1e-6)
    assert np.isnan(A.angle_map(pred, truth)[0]).all() and np.isnan(A.angle_map(pred, truth)[:, 0]).all()
    # the length of a vector does not matter, only its direction
    np.testing.assert_allclose(A.angular_errors(3 * pred, 0.5 * truth, mask), err, atol=1e-9)
    with pytest.raises(ValueError):
        A.angular_statistics(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        A.angular_errors(pred, truth, mask[:5])


def test_pixels_are_pooled_over_images_not_averaged_per_image():
    small = np.full(10, 40.0)  # an image with 10 scored pixels, all 40 degrees
    large = np.full(90, 10.0)  # one with 90 pixels at 10 degrees
    s = A.angular_statistics([small, large])
    assert s["pixels"] == 100
    assert s["mean"] == pytest.approx(13.0)  # (10 * 40 + 90 * 10) / 100, not (40 + 10) / 2 = 25
    assert s["median"] == pytest.approx(10.0) and s["within_11_25"] == pytest.approx(90.0)
    assert s["rmse"] == pytest.approx(math.sqrt((10 * 1600 + 90 * 100) / 100))
    empty = A.angular_statistics([])
    assert empty["pixels"] == 0 and all(empty[k] is None for k in A.STATISTICS)


def test_uint8_encoded_maps_lose_under_half_a_degree():
    n = _random_normals((16, 16), seed=7)
    back = N.decode_normals(N.encode_normals(n))
    assert A.angular_errors(back, n).max() < 0.5


def test_rand1_and_oracle_skip_outputs_without_a_face():
    real = _random_normals((8, 8))
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    axis = np.cross(real, _random_normals((8, 8), 2))
    outs = np.stack([_rotate_about(real, axis, d) for d in (30.0, 5.0, 1.0, 12.0)])
    est = A.NormalEstimate(outs.astype(np.float32), np.ones((4, 8, 8), bool), np.array([True, True, False, True]))
    errs = A.score_outputs(est, real, mask)
    assert errs[2] is None  # no face found in output 3: nothing scored, so it cannot be the oracle
    np.testing.assert_allclose(errs[0], 30.0, atol=1e-4)
    assert errs[0].shape == (16,)
    rand1, best = A.rand1_and_oracle(errs, rand_index=3)
    np.testing.assert_allclose(rand1, 12.0, atol=1e-4)
    assert best == 1
    assert A.rand1_and_oracle(errs, rand_index=2)[0] is None
    assert A.rand1_and_oracle([None, None], 0) == (None, None)


def test_float_normals_of_real_faces_match_their_maps_and_score_zero_against_themselves(shared_data):
    from tests.test_evaluate_normals import _zip_photos
    from tests.test_facemesh import _mediapipe_and_tflite

    if not _mediapipe_and_tflite():
        pytest.skip("the face-mesh model (mediapipe==0.10.21 wheel, tflite) is not installed")
    photos = _zip_photos(shared_data / "celeba-10k.zip", 2)
    res = N.normal_maps(photos, float_normals=True)
    assert res.found.all() and res.normals.shape == (2, 96, 96, 3) and res.normals.dtype == np.float32
    np.testing.assert_array_equal(N.encode_normals(res.normals, res.masks), res.maps)
    assert (A.defined(res.normals) == res.masks).all()
    est = A.estimate_face_normals(photos)
    errs = A.score_outputs(est, res.normals[0], res.masks[0])
    assert A.angular_statistics(errs[0])["mean"] == pytest.approx(0.0, abs=1e-3)  # a photo against itself
    assert A.angular_statistics(errs[1])["mean"] > 1.0  # another face
