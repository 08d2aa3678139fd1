"""bf16 pixel descriptors (issue 17, part 2): ``SynthesisOptions.autocast``, the descriptors' VGG pass in bfloat16.

``off`` is float32 as before (the stage-2 fixture pins it and stays bit-identical); ``bf16`` gives descriptors within
a small tolerance of float32's; ``auto`` is bf16 exactly where the device computes it natively, and the pipeline
resolves it, so a manifest records what ran.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnn import devices
from pixelnn.cli import main
from pixelnn.compose import recompose, recompose_keywords
from pixelnn.data.dataset import Dataset
from pixelnn.descriptors import HypercolumnDescriptor, make_descriptor
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import MANIFEST_VERSION, PixelNNPipeline, save_result

from .conftest import make_tiny_library


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """Stage-1-like images: smooth colour fields (N, S, S, 3) uint8."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.as_tensor(small).permute(0, 3, 1, 2), size=(size, size),
                                          mode="bicubic", align_corners=False)
    return big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_bf16_hypercolumns_are_close_to_float32():
    images = _smooth_images(3, 32, seed=0)
    fp32 = HypercolumnDescriptor()(images)  # (N, P, 1472) unit vectors
    bf16 = HypercolumnDescriptor(autocast="bf16")(images)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    cos = (fp32 * bf16).sum(-1)  # (N, P)
    assert not torch.equal(fp32, bf16)  # it did run in another precision
    assert cos.mean() > 0.999 and cos.min() > 0.99, (float(cos.mean()), float(cos.min()))
    assert torch.allclose(bf16.norm(dim=-1), torch.ones(1), atol=1e-4)


def test_descriptor_names_carry_the_precision_and_bad_values_are_refused():
    assert HypercolumnDescriptor().name == "vgg16-hypercolumn"
    assert make_descriptor("hypercolumn", autocast="bf16").name == "vgg16-hypercolumn-bf16"
    with pytest.raises(PixelNNError, match="valid: off, bf16"):
        HypercolumnDescriptor(autocast="auto")  # resolved by the pipeline, never by a descriptor
    assert SynthesisOptions().autocast == "auto"
    with pytest.raises(PixelNNError, match="autocast.*valid: auto, off, bf16"):
        SynthesisOptions(autocast="fp16")
    old = {"format": "pixelnn-synthesis", "version": 6, "options": {"mode": "coherent"}}
    assert SynthesisOptions.from_dict(old).autocast == "off"  # made before bf16 descriptors


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("autocast")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    return root, model, data, pipe


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_to_bf16_exactly_where_native(setup, monkeypatch, native):
    pipe = setup[3]
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert pipe.check_options().autocast == ("bf16" if native else "off")
    assert pipe.check_options(autocast="off").autocast == "off"
    assert pipe.check_options(autocast="bf16").autocast == "bf16"


def test_bf16_outputs_are_explainable_recorded_and_reproduced(setup, tmp_path):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[1])
    fp32 = pipe(x, autocast="off")
    result = pipe(x, autocast="bf16")
    assert result.options.autocast == "bf16" and result.outputs.shape == fp32.outputs.shape
    # the same PCA, another precision: separate descriptors (and pixel caches), both unit vectors
    d32, c32 = pipe.pixel_descriptor("hypercolumn", 16, "off")
    d16, c16 = pipe.pixel_descriptor("hypercolumn", 16, "bf16")
    assert d16 is not d32 and d16.pca is d32.pca and d16.name == d32.name + "-bf16"
    if c32 is not None:
        assert c16 is not None and c16.dir != c32.dir
    # most of the correspondences agree; all are explained and rebuild the outputs exactly
    assert (result.exemplar == fp32.exemplar).mean() > 0.5
    again = recompose(result.stage1, pipe.library, result.exemplar, result.source_y, result.source_x,
                      **recompose_keywords(result.options, x))
    assert np.array_equal(again, result.outputs)
    m = json.loads((save_result(result, tmp_path / "r", pipe.library) / "manifest.json").read_text())
    assert m["version"] == MANIFEST_VERSION and m["options"]["autocast"] == "bf16"
    assert np.array_equal(pipe(x, SynthesisOptions.load(tmp_path / "r" / "manifest.json")).outputs, result.outputs)


def test_a_given_descriptor_gets_a_twin_in_the_other_precision(setup):
    root, model, data, pipe = setup
    given = pipe.pixel_descriptor("hypercolumn", 16, "off")[0]
    other = PixelNNPipeline(pipe.regressor, pipe.library, pipe.task, descriptor=given)
    twin = other.pixel_descriptor("hypercolumn", 16, "bf16")[0]
    assert twin is not given and twin.pca is given.pca and twin.autocast == "bf16" and given.autocast == "off"


def test_cli_autocast_flag(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    from PIL import Image

    Image.fromarray(np.asarray(Dataset(data).split("val").inputs[0])).save(tmp_path / "x.png")
    args = ["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--num-outputs", "2"]
    assert main(args + ["--out", str(tmp_path / "o"), "--autocast", "off", "--no-correspondence-maps"]) == 0
    manifest = json.loads(next((tmp_path / "o").glob("*/manifest.json")).read_text())
    assert manifest["options"]["autocast"] == "off"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(tmp_path / "p"), "--autocast", "fp16"])
    assert e.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    (tmp_path / "opts.json").write_text(json.dumps({"autocast": "fp16"}))
    assert main(args + ["--out", str(tmp_path / "q"), "--options", str(tmp_path / "opts.json")]) != 0
    err = capsys.readouterr().err
    assert "valid: auto, off, bf16" in err and "Traceback" not in err
