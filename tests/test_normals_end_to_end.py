"""The normals task end to end: train, index, synthesize (from a photo or a normal map), evaluate, the web app.

The wiring runs with a stand-in for the face mesh on 32x32 photos (fast, no model); the real chain
(prepare with the face mesh, train a few steps, index, synthesize --from-photo, evaluate with the
angular metrics, report) runs on 30 CelebA faces when ../shared/data is there.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnn import normals as N
from pixelnn.cli import main
from pixelnn.config import TaskConfig, TrainConfig
from pixelnn.data.prepare import prepare_dataset
from pixelnn.errors import PixelNNError
from pixelnn.models.regressor import to_tensor, to_uint8
from pixelnn.train_loop import mirror_inputs
from tests.conftest import shared_data_dir
from tests.test_facemesh import needs_model
from tests.test_prepare_normals import _collection, _fake_normal_maps

pytest.importorskip("faiss")

S = 32
REAL_NORMAL_MAPS = N.normal_maps  # the module fixture below swaps in a stand-in while it lives


def _hemisphere(size=S):
    """A sphere's normals (view frame: x right, y up, z to the viewer) on its disc, 0 outside: (size, size, 3), mask."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c - 0.2, -c)
    r2 = x ** 2 + y ** 2
    mask = r2 < 0.6
    n = np.stack([x, y, np.sqrt(np.clip(1 - r2, 0, None))], -1)
    return np.where(mask[..., None], n, 0), mask


def test_mirroring_a_normal_map_negates_its_x_component_and_keeps_the_background():
    n, mask = _hemisphere()
    enc = N.encode_normals(n, mask)[None]  # (1, S, S, 3)
    got = to_uint8(mirror_inputs(to_tensor(enc), normals=True))[0]
    want = N.encode_normals(n[:, ::-1] * [-1, 1, 1], mask[:, ::-1])  # the mirrored sphere's own normals
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got[~mask[:, ::-1]] == N.BACKGROUND).all()
    plain = to_uint8(mirror_inputs(to_tensor(enc)))[0]  # other tasks: a plain mirror
    np.testing.assert_array_equal(plain, enc[0, :, ::-1])


@pytest.fixture(scope="module")
def normals_model(tmp_path_factory):
    """A tiny normals model (stand-in face mesh) with its library: 32x32, a few training steps."""
    from pixelnn.library import ExemplarLibrary
    from pixelnn.training import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("normals-e2e")
    mp = pytest.MonkeyPatch()
    mp.setattr(N, "normal_maps", _fake_normal_maps)
    _collection(root / "src", n=16, no_face=(3,))
    prepare_dataset(root / "src", root / "data", TaskConfig(name="normals", size=S), fit="crop", progress=False,
                    val_fraction=0.2, test_fraction=0.0)
    train(root / "data", root / "model", TrainConfig(batch_size=4, max_steps=3, val_every=3, sample_every=100,
                                                      num_threads=1, device="cpu"),
          model_overrides={"base_channels": 8, "depth": 2}, progress=False)
    ExemplarLibrary.build(None, root / "model", [root / "data"], progress=False)
    rng = np.random.default_rng(5)
    face = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    no_face = face.copy()
    no_face[:6, :6] = (255, 0, 0)
    Image.fromarray(face).save(root / "face.png")
    Image.fromarray(no_face).save(root / "no_face.png")
    yield root
    mp.undo()


def test_synthesize_from_a_photo_derives_the_normal_map_and_no_face_is_one_line(normals_model, capsys):
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline, load_image_file
    from pixelnn.synthesize import synthesize_files

    root = normals_model
    pipe = PixelNNPipeline.from_model_dir(root / "model", pca_dims=16, device="cpu")
    assert pipe.task.name == "normals" and pipe.photo_fit == "crop"
    rep = synthesize_files([root / "face.png", root / "no_face.png"], root / "model", root / "out",
                           SynthesisOptions(num_outputs=3), from_photo=True, pipeline=pipe, progress=False)
    assert [p.name for p in rep.done] == ["face.png"]
    assert [(p.name, why) for p, why in rep.failed] == [
        ("no_face.png", "no_face.png: no face found in the photo (the normals task needs an aligned face crop, "
                        "e.g. CelebA's)")]
    # the input saved is the normal map of the photo, centre-cropped as the training photos were
    photo = load_image_file(root / "face.png", S, fit="crop")
    want = _fake_normal_maps(photo[None]).maps[0]
    np.testing.assert_array_equal(np.asarray(Image.open(root / "out" / "face" / "input.png")), want)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "out" / "face" / "photo.png")), photo)
    # a normal map given directly is synthesized as is
    Image.fromarray(want).save(root / "map.png")
    rep = synthesize_files([root / "map.png"], root / "model", root / "out2", SynthesisOptions(num_outputs=2),
                           pipeline=pipe, progress=False)
    assert len(rep.done) == 1 and len(list((root / "out2" / "map").glob("output_*.png"))) == 2
    # the command line: one line on stderr, exit status 2, no traceback
    rc = main(["-q", "synthesize", str(root / "no_face.png"), "--from-photo", "--model", str(root / "model"),
               "--out", str(root / "out3"), "--num-outputs", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == ("pixelnn synthesize: error: no_face.png: no face found in the photo (the normals "
                                       "task needs an aligned face crop, e.g. CelebA's)")


def test_web_app_takes_a_face_photo_or_a_normal_map(normals_model):
    pytest.importorskip("gradio")
    from pixelnn.pipeline import PixelNNPipeline, load_image_file
    from pixelnn.web import WebApp

    root = normals_model
    app = WebApp(PixelNNPipeline.from_model_dir(root / "model", pca_dims=16, device="cpu"), work_dir=root / "work")
    assert "face normal map" in app.describe() and not app.takes_sketches
    assert "normal map" in app.source_help("input") and "face photo" in app.source_help("photo")
    x, photo = app.make_input("photo", photo_path=str(root / "face.png"))
    np.testing.assert_array_equal(photo, load_image_file(root / "face.png", S, fit="crop"))
    np.testing.assert_array_equal(x, _fake_normal_maps(photo[None]).maps[0])  # derived, and shown as the input
    result = app.synthesize(x, app.options_from_page({"num_outputs": 2}))
    np.testing.assert_array_equal(result.input, x)
    assert len(result.outputs) == 2
    Image.fromarray(x).save(root / "upload.png")
    x2, none = app.make_input("input", input_path=str(root / "upload.png"))
    assert none is None
    np.testing.assert_array_equal(x2, x)
    with pytest.raises(PixelNNError, match="no face found in the photo"):
        app.make_input("photo", photo_path=str(root / "no_face.png"))
    with pytest.raises(PixelNNError, match="takes a normal map"):
        app.make_input("sketch", drawing=np.zeros((64, 64, 4), np.uint8))
    demo = __import__("pixelnn.web", fromlist=["build_ui"]).build_ui(app)  # the page builds for a normals model
    assert demo is not None


# ------------------------------------------------------------------------------------- real CelebA faces


@needs_model
@pytest.mark.integration
def test_celeba_prepare_train_index_synthesize_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(N, "normal_maps", REAL_NORMAL_MAPS)
    celeba = (shared_data_dir() or tmp_path / "absent") / "celeba-10k.zip"
    if not celeba.is_file():
        pytest.skip("../shared/data/celeba-10k.zip is absent")
    torch.set_num_threads(1)
    with zipfile.ZipFile(celeba) as src, zipfile.ZipFile(tmp_path / "faces.zip", "w") as dst:
        for i in range(1, 31):
            name = f"img_align_celeba/{i:06d}.jpg"
            dst.writestr(name, src.read(name))
        (tmp_path / "new.jpg").write_bytes(src.read("img_align_celeba/009999.jpg"))
    data, model = tmp_path / "data", tmp_path / "model"
    assert main(["-q", "prepare", str(tmp_path / "faces.zip"), "--task", "normals", "--fit", "crop",
                 "--out", str(data), "--val-fraction", "0.1", "--test-fraction", "0.1"]) == 0
    assert main(["-q", "train", str(data), "--out", str(model), "--steps", "4", "--batch-size", "4",
                 "--val-every", "4", "--threads", "1", "--base-channels", "8", "--device", "cpu"]) == 0
    assert main(["-q", "index", str(data), "--model", str(model), "--device", "cpu"]) == 0
    assert main(["-q", "synthesize", str(tmp_path / "new.jpg"), "--from-photo", "--model", str(model),
                 "--out", str(tmp_path / "res"), "--num-outputs", "3", "--device", "cpu"]) == 0
    res = tmp_path / "res" / "new"
    x = np.asarray(Image.open(res / "input.png"))
    assert x.shape == (96, 96, 3) and 0.15 < (x != N.BACKGROUND).any(-1).mean() < 0.35  # the face's normal map
    assert len(list(res.glob("output_*.png"))) == 3
    # a photo without a face: one line, exit 2
    noise = np.random.default_rng(0).integers(0, 256, (109, 89, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    capsys.readouterr()
    assert main(["-q", "synthesize", str(tmp_path / "noise.png"), "--from-photo", "--model", str(model),
                 "--out", str(tmp_path / "res2"), "--num-outputs", "3", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("noise.png: no face found in the photo (the normals task needs "
                                                    "an aligned face crop, e.g. CelebA's)")
    assert main(["-q", "evaluate", str(model), "--out", str(tmp_path / "ev"), "--split", "train", "--num-inputs", "2",
                 "--num-outputs", "3", "--fid-outputs-per-input", "1", "--num-examples", "1", "--threads", "1",
                 "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["normals"] == {"enabled": True, "reason": "task normals (faces)", "real_no_face": 0}
    s = m["methods"]["pixelnn"]
    assert s["normals_inputs"] == 2 and s["normals_outputs_scored"] == 6
    assert 0 < s["oracle_normals_mean"] <= 60 and 0 <= s["normals_oracle_coverage"] <= 1
    # edge AP beside the angles (Table 1): the outputs' HED edges against the real photo's
    assert m["faithfulness_kind"] == "edges" and "HED edges of the real photo" in m["protocol"]["faithfulness"]
    assert 0 <= s["faithfulness_ap"] <= 1 and 0 <= s["faithfulness_f1"] <= 1
    assert main(["-q", "report", str(tmp_path / "ev"), "--out", str(tmp_path / "pages")]) == 0
    assert "Surface normals (paper Tables 1–2)" in (tmp_path / "pages" / "ev.html").read_text()


# ------------------------------------------------------------------------------------- a real browser
@pytest.fixture(scope="module")
def normals_page(normals_model):
    """``pixelnn serve`` on the tiny normals model, driven by Debian's chromium (see tests/test_web.py)."""
    from tests.test_web import open_browser, serve_model

    with serve_model(normals_model / "model", "--device", "cpu") as url, open_browser(url) as page:
        yield page


def test_browser_normal_map_upload_gives_outputs_and_correspondences(normals_page, normals_model):
    from tests.test_web import _upload, _wait_gallery, _wait_status

    page = normals_page
    assert page.get_by_role("tab", name="Normal map").count() == 1
    assert page.get_by_role("tab", name="Sketch").count() == 0  # no sketch pad for a normals model
    n, mask = _hemisphere()
    Image.fromarray(N.encode_normals(n, mask)).save(normals_model / "sphere.png")
    page.get_by_role("tab", name="Normal map").click()
    _upload(page, "input-file", normals_model / "sphere.png")
    _wait_status(page, "is ready")
    page.click("#run-input")
    assert "72 outputs from the input image" in _wait_status(page, "outputs from the input image")
    _wait_gallery(page)
    assert page.locator("#input-view img").evaluate("i => i.naturalWidth") == S
    page.locator("#gallery img").nth(3).click()
    page.wait_for_function("document.querySelector('#contrib-table').innerText.includes('share of pixels')")
    page.locator("#corr-view img").wait_for()


@needs_model
def test_browser_photo_without_a_face_is_one_line_and_the_app_keeps_serving(normals_page, normals_model):
    """The served process runs the real face mesh: random noise has no face; a normal map still works after."""
    from tests.test_web import _upload, _wait_gallery, _wait_status

    page = normals_page
    noise = np.random.default_rng(1).integers(0, 256, (109, 89, 3), dtype=np.uint8)
    Image.fromarray(noise).save(normals_model / "noise.png")
    page.get_by_role("tab", name="Photo").click()
    _upload(page, "photo-file", normals_model / "noise.png")
    _wait_status(page, "is ready")
    page.click("#run-photo")
    assert "no face found in the photo" in _wait_status(page, "Error")
    page.get_by_role("tab", name="Normal map").click()
    page.click("#run-input")
    _wait_status(page, "outputs from the input image")
    _wait_gallery(page)
