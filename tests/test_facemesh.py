"""The face-mesh executor (pixelnn.models.facemesh) against the real TFLite interpreter, and its kernels.

The reference (tests/data/facemesh_reference.json) holds the outputs of LiteRT's interpreter on
inputs that tests/data/make_facemesh_reference.py builds (synthetic ones from a seed and formulas,
and the first CelebA faces of ../shared/data/celeba-10k.zip); only numbers are stored, and the test
rebuilds the inputs with the same functions (see tests/data/README.txt).
"""

from __future__ import annotations

import json
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelnn.errors import PixelNNError
from pixelnn.models import facemesh
from tests.conftest import shared_data_dir

DATA = Path(__file__).resolve().parent / "data"
TOLERANCE_PX = 1e-3  # measured: 1.5e-4 px max, 2e-5 px mean (torch 2.13 CPU, LiteRT 2.3.0)


def _mediapipe_and_tflite() -> bool:
    try:
        facemesh.model_path()
    except PixelNNError:
        return False
    return importlib.util.find_spec("tflite") is not None


needs_model = pytest.mark.skipif(not _mediapipe_and_tflite(),
                                 reason="mediapipe==0.10.21's face-mesh model or tflite is not installed")


def _reference_module():
    sys.path.insert(0, str(DATA))
    try:
        import make_facemesh_reference
    finally:
        sys.path.remove(str(DATA))
    return make_facemesh_reference


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty weight cache, and no model loaded in this process."""
    monkeypatch.setenv("PIXELNN_CACHE", str(tmp_path))
    monkeypatch.setattr(facemesh, "_MODELS", {})
    return tmp_path


def _check_against_reference(inputs: np.ndarray, name: str) -> None:
    ref = {k: np.asarray(e["values"], dtype=e["dtype"]).reshape(e["shape"])
           for k, e in json.loads((DATA / "facemesh_reference.json").read_text()).items()}
    mod = _reference_module()
    assert list(ref[f"{name}_sha1"]) == [mod.sha1(x) for x in inputs], "the rebuilt inputs differ from the reference's"
    model = facemesh.load_facemesh()
    with torch.inference_mode():
        landmarks, logits = model(torch.from_numpy(inputs).permute(0, 3, 1, 2).contiguous())
    for tag in (name, f"{name}_ref"):  # LiteRT's default (XNNPACK) and reference kernels
        err = np.abs(landmarks.numpy() - ref[f"{tag}_landmarks"])
        assert err.max() < TOLERANCE_PX, (tag, err.max())
        assert err.mean() < 1e-4, (tag, err.mean())
        np.testing.assert_allclose(logits.numpy(), ref[f"{tag}_score"], atol=1e-3)


@needs_model
def test_facemesh_matches_tflite_on_synthetic_inputs():
    _check_against_reference(_reference_module().synthetic_inputs(), "synthetic")


@needs_model
@pytest.mark.integration
def test_facemesh_matches_tflite_on_celeba_faces():
    celeba = (shared_data_dir() or Path("/nonexistent")) / "celeba-10k.zip"
    if not celeba.is_file():
        pytest.skip("../shared/data/celeba-10k.zip is absent")
    mod = _reference_module()
    inputs = mod.celeba_inputs(celeba)
    _check_against_reference(inputs, "celeba")
    _, presence = facemesh.run_facemesh(inputs)
    assert (presence >= facemesh.PRESENCE_THRESHOLD).all()  # all four are faces


@needs_model
def test_run_facemesh_shapes_and_input_kinds():
    images = (_reference_module().synthetic_inputs() * 255).round().astype(np.uint8)  # exact: built from uint8
    lm, p = facemesh.run_facemesh(images, batch_size=2)
    assert lm.shape == (3, 468, 3) and lm.dtype == np.float32 and p.shape == (3,)
    lm2, p2 = facemesh.run_facemesh(images.astype(np.float32) / 255)
    np.testing.assert_allclose(lm, lm2, atol=1e-3)  # the batch size changes the float rounding a little
    np.testing.assert_allclose(p, p2, atol=1e-5)
    assert p[2] > 0.5 > p[0]  # the face-like drawing scores as a face, the noise does not
    empty_lm, empty_p = facemesh.run_facemesh(np.zeros((0, 192, 192, 3), np.uint8))
    assert empty_lm.shape == (0, 468, 3) and empty_p.shape == (0,)
    with pytest.raises(ValueError):
        facemesh.run_facemesh(np.zeros((1, 96, 96, 3), np.uint8))


@needs_model
def test_graph_uses_seven_op_types():
    graph, tensors = facemesh.read_tflite(facemesh.model_path())
    kinds = {op["op"] for op in graph["ops"]}
    assert kinds == set(facemesh.SUPPORTED_OPS) - {"DEQUANTIZE"}  # dequantize is folded into the constants
    assert len(graph["ops"]) == 97 and len(tensors) == 113
    assert all(t.dtype == torch.float32 for t in tensors.values())


@needs_model
def test_cache_is_written_once_and_enough_without_tflite(fresh_cache, monkeypatch):
    facemesh.load_facemesh()
    assert [p.name for p in fresh_cache.iterdir()] == [facemesh.CACHE_NAME]  # no temporary files left
    monkeypatch.setattr(facemesh, "_MODELS", {})
    monkeypatch.setitem(sys.modules, "tflite", None)  # `import tflite` now fails
    monkeypatch.setattr(facemesh, "read_tflite", lambda *a: pytest.fail("the cache was not used"))
    model = facemesh.load_facemesh()
    assert facemesh.load_facemesh() is model


@needs_model
def test_damaged_cache_is_rebuilt(fresh_cache):
    (fresh_cache / facemesh.CACHE_NAME).write_bytes(b"not a safetensors file")
    graph, tensors = facemesh.facemesh_weights()
    assert len(tensors) == 113
    graph2, tensors2 = facemesh.facemesh_weights()  # now read from the rebuilt cache
    assert graph2 == graph and all(torch.equal(tensors[k], tensors2[k]) for k in tensors)


def test_missing_mediapipe_gives_the_pip_command(fresh_cache, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(PixelNNError, match=r"pip install --no-deps mediapipe==0\.10\.21") as e:
        facemesh.load_facemesh()
    assert "\n" not in str(e.value)


@needs_model
def test_missing_tflite_gives_the_pip_command(fresh_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite", None)
    with pytest.raises(PixelNNError, match=r"pip install tflite==2\.18\.0") as e:
        facemesh.load_facemesh()
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------
# kernels against naive references


def _naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pads: tuple[int, int, int, int],
                depthwise: bool = False) -> np.ndarray:
    """Direct convolution of one (C, H, W) image: w (O, C, kh, kw) or (C, 1, kh, kw); pads (top, bottom, left, right)."""
    top, bottom, left, right = pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    o, _, kh, kw = w.shape
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((o, oh, ow))
    for k in range(o):
        for i in range(oh):
            for j in range(ow):
                patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw]  # (C, kh, kw)
                out[k, i, j] = (patch[k] * w[k, 0]).sum() if depthwise else (patch * w[k]).sum()
        out[k] += b[k]
    return out


@pytest.mark.parametrize("size,kernel,stride,expected", [(192, 3, 2, (0, 1)), (96, 3, 1, (1, 1)), (6, 3, 2, (0, 1)),
                                                         (7, 3, 2, (1, 1)), (3, 3, 3, (0, 0)), (5, 1, 1, (0, 0))])
def test_same_padding(size, kernel, stride, expected):
    assert facemesh.same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("stride,padding,size", [(2, "SAME", 8), (1, "SAME", 7), (1, "VALID", 6), (3, "VALID", 6)])
def test_conv2d_tf_matches_naive(stride, padding, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    pads = (*facemesh.same_padding(size, 3, stride), *facemesh.same_padding(size, 3, stride)) if padding == "SAME" else (0,) * 4
    got = facemesh.conv2d_tf(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding)
    np.testing.assert_allclose(got[0].numpy(), _naive_conv(x[0], w, b, stride, pads), atol=1e-10)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_matches_naive(stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 5, 6, 6))
    w = rng.standard_normal((5, 1, 3, 3))
    b = rng.standard_normal(5)
    pads = (*facemesh.same_padding(6, 3, stride), *facemesh.same_padding(6, 3, stride))
    got = facemesh.conv2d_tf(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, "SAME", groups=5)
    np.testing.assert_allclose(got[0].numpy(), _naive_conv(x[0], w, b, stride, pads, depthwise=True), atol=1e-10)


def test_max_pool_pad_and_prelu_match_naive():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6))
    pooled = facemesh.max_pool_tf(torch.from_numpy(x), 2, 2, "VALID").numpy()
    np.testing.assert_array_equal(pooled, x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
    same = facemesh.max_pool_tf(torch.from_numpy(x[:, :, :5, :5]), 2, 2, "SAME").numpy()  # 5 -> 3, the last row alone
    np.testing.assert_array_equal(same[:, :, 2, 2], x[:, :, 4, 4])
    padded = facemesh.pad_nhwc(torch.from_numpy(x), [[0, 0], [0, 0], [0, 0], [0, 3]]).numpy()  # channels 3 -> 6
    assert padded.shape == (2, 6, 6, 6)
    np.testing.assert_array_equal(padded[:, :3], x)
    assert (padded[:, 3:] == 0).all()
    alpha = rng.standard_normal(3)
    got = facemesh.prelu(torch.from_numpy(x), torch.from_numpy(alpha)).numpy()
    np.testing.assert_allclose(got, np.where(x >= 0, x, alpha[None, :, None, None] * x))
