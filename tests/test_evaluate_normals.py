"""``pixelnn evaluate``'s angular-error metrics (paper Tables 1-2): wiring, counts, report, and when they apply.

The wiring runs on the tiny superres library with a stand-in for the face mesh (the photo's colours
read as normals; "no face" in about half of the images), so it needs no model; the real face mesh
decides face datasets from others on a few real photos when ../shared/data is there.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from pixelnn.cli import build_parser, main
from pixelnn.errors import PixelNNError
from pixelnn.evaluate import EvalSettings, evaluate, normals_metrics_apply
from pixelnn.evaluation import angular as A
from pixelnn.normals import decode_normals
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.report import normals_table, report_command

from .conftest import make_tiny_library

pytest.importorskip("faiss")

CALLS: list[int] = []
REAL_ESTIMATE = A.estimate_face_normals  # the module fixture below swaps in a stand-in


def _fake_estimate(images, batch_size=64, progress=False):
    """Normals = the image's colours as (n + 1) / 2; the face mask a centre square; no face when the pixel sum is odd."""
    images = np.asarray(images)
    CALLS.append(len(images))
    n, h, w, _ = images.shape
    found = images.reshape(n, -1).astype(np.int64).sum(1) % 2 == 0
    masks = np.zeros((n, h, w), bool)
    masks[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = True
    masks &= found[:, None, None]
    normals = np.where(masks[..., None], decode_normals(images), 0).astype(np.float32)
    return A.NormalEstimate(normals, masks, found)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalnormals")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    mp = pytest.MonkeyPatch()
    mp.setattr(A, "estimate_face_normals", _fake_estimate)
    settings = EvalSettings(split="val", num_inputs=4, num_outputs=6, fid_outputs_per_input=2, num_examples=1,
                            diversity_outputs=3, kid_subsets=2, normals_metrics="on")
    CALLS.clear()
    metrics = evaluate(model, root / "report", settings, data_dir=data, pipeline=pipe, progress=False)
    calls = list(CALLS)
    yield root, model, data, pipe, metrics, calls, mp
    mp.undo()


def test_normals_metrics_for_rand1_and_oracle_with_no_face_counted(setup):
    root, model, data, pipe, metrics, calls, _ = setup
    assert metrics["normals"]["enabled"] and metrics["normals"]["reason"].startswith("turned on")
    rows = [json.loads(line) for line in (root / "report" / "per_input.jsonl").read_text().splitlines()]
    real_no_face = metrics["normals"]["real_no_face"]
    scored_rows = [r for r in rows if "normals" in r["methods"]["pixelnn"]]
    assert len(scored_rows) == 4 - real_no_face
    assert calls[0] == 4  # the real photos first, then one call per method and scored input
    for name, n_out in (("pixelnn", 6), ("stage1", 1)):
        s = metrics["methods"][name]
        recs = [r["methods"][name]["normals"] for r in scored_rows]
        assert s["normals_inputs"] == len(recs)
        assert s["normals_outputs_scored"] == n_out * len(recs) == sum(r["outputs_scored"] for r in recs)
        assert s["normals_outputs_no_face"] == sum(r["outputs_no_face"] for r in recs)
        assert s["normals_rand1_no_face"] == sum(r["rand1_mean"] is None for r in recs)
        assert s["normals_oracle_no_face"] == sum(r["oracle_mean"] is None for r in recs)
        for r in recs:  # the oracle is the best output of its input
            if r["oracle_mean"] is not None and r["rand1_mean"] is not None:
                assert r["oracle_mean"] <= r["rand1_mean"] + 1e-6
        for kind in ("rand1", "oracle"):
            if s[f"normals_{kind}_no_face"] < len(recs):
                assert 0 <= s[f"{kind}_normals_median"] <= 180 and 0 <= s[f"{kind}_normals_within_30"] <= 100
                assert s[f"{kind}_normals_within_11_25"] <= s[f"{kind}_normals_within_22_5"] <= s[f"{kind}_normals_within_30"]
                assert s[f"{kind}_normals_rmse"] >= s[f"{kind}_normals_mean"] - 1e-6
                assert 0 < s[f"normals_{kind}_coverage"] <= 1
            else:
                assert s[f"{kind}_normals_mean"] is None
    st = metrics["methods"]["stage1"]
    assert all(st[f"rand1_normals_{k}"] == st[f"oracle_normals_{k}"] for k in A.STATISTICS)  # one output
    assert "pooled over all scored pixels" in metrics["protocol"]["normals"]
    assert metrics["settings"]["normals_metrics"] == "on" and metrics["timings_seconds"]["normals"] >= 0


def test_normals_outputs_per_input_bounds_the_estimated_outputs(setup, tmp_path):
    root, model, data, pipe, metrics, calls, _ = setup
    settings = EvalSettings(split="val", num_inputs=4, num_outputs=6, fid_outputs_per_input=2, num_examples=0,
                            diversity_outputs=3, kid_subsets=2, normals_metrics="on", normals_outputs_per_input=3)
    m = evaluate(model, tmp_path / "r", settings, data_dir=data, pipeline=pipe, progress=False)
    s = m["methods"]["pixelnn"]
    assert s["normals_outputs_scored"] == 3 * s["normals_inputs"]
    # the Rand-1 output is always among them: its statistics are those of the full run
    for k in A.STATISTICS:
        assert s[f"rand1_normals_{k}"] == metrics["methods"]["pixelnn"][f"rand1_normals_{k}"]
    # the other metrics do not move when the normals are estimated on fewer outputs (their draws are their own)
    for k in ("rand1_lpips", "oracle_lpips", "diversity_lpips", "fid"):
        assert s[k] == metrics["methods"]["pixelnn"][k]
    with pytest.raises(PixelNNError, match="normals-outputs-per-input must be at least 1"):
        EvalSettings(normals_outputs_per_input=0).check()
    with pytest.raises(PixelNNError, match="invalid normals-metrics 'maybe'; valid: auto, on, off"):
        EvalSettings(normals_metrics="maybe").check()


def test_off_and_auto_on_a_non_face_task_compute_nothing(setup, tmp_path):
    root, model, data, pipe, metrics, calls, _ = setup
    for mode, reason in (("off", "turned off"), ("auto", "task superres")):
        CALLS.clear()
        settings = EvalSettings(split="val", num_inputs=2, num_outputs=3, fid_outputs_per_input=1, num_examples=0,
                                diversity_outputs=3, kid_subsets=2, normals_metrics=mode)
        m = evaluate(model, tmp_path / mode, settings, data_dir=data, pipeline=pipe, progress=False)
        assert not CALLS and not m["normals"]["enabled"] and m["normals"]["reason"].startswith(reason)
        assert not any("normals" in k for k in m["methods"]["pixelnn"])
        assert m["protocol"]["normals"].startswith("not computed")
        assert normals_table(m) is None


def test_auto_decides_edge_datasets_by_their_photos(monkeypatch):
    photos = np.zeros((3, 8, 8, 3), np.uint8)
    monkeypatch.setattr(A, "looks_like_faces", lambda p: True)
    assert normals_metrics_apply("auto", "edges", True, photos)[0]
    assert normals_metrics_apply("auto", "normals", False, photos)[0]
    monkeypatch.setattr(A, "looks_like_faces", lambda p: False)
    on, why = normals_metrics_apply("auto", "edges", True, photos)
    assert not on and "not a face dataset" in why
    assert not normals_metrics_apply("auto", "paired", False, photos)[0]  # paired inputs that are not edge maps
    assert normals_metrics_apply("on", "superres", False, photos)[0]
    assert not normals_metrics_apply("off", "normals", False, photos)[0]

    def missing(p):
        raise PixelNNError("the face-mesh model needs the mediapipe==0.10.21 wheel")

    monkeypatch.setattr(A, "looks_like_faces", missing)
    on, why = normals_metrics_apply("auto", "edges", True, photos)
    assert not on and "unavailable" in why


def test_report_shows_the_table_1_2_columns(setup, tmp_path):
    root, model, data, pipe, metrics, calls, _ = setup
    table = normals_table(metrics)
    assert table[0] == ["method", "Mean ↓", "Median ↓", "RMSE ↓", "11.25° ↑", "22.5° ↑", "30° ↑", "no face", "coverage"]
    assert [r[0] for r in table[1:]] == ["PixelNN (Rand-1)", "PixelNN (Oracle)", "Stage 1 (regressor)"]
    with_ap = {**metrics, "faithfulness_kind": "edges",
               "methods": {k: {**v, "faithfulness_ap": 0.41} for k, v in metrics["methods"].items()}}
    t2 = normals_table(with_ap)
    assert t2[0][1] == "edge AP ↑" and t2[1][1] == "0.41"  # Table 2: AP beside the angles
    index = report_command([root / "report"], tmp_path / "pages")
    page = (tmp_path / "pages" / "report.html").read_text()
    assert "Surface normals (paper Tables 1–2)" in page and "PixelNN (Oracle)" in page
    assert "normals mean angle" in index.read_text()


def test_cli_evaluate_normals_flags(setup, tmp_path, capsys):
    root, model, data, pipe, metrics, calls, _ = setup
    args = build_parser().parse_args(["evaluate", "m", "--out", "o"])
    assert (args.normals_metrics, args.normals_outputs_per_input) == ("auto", None)
    rc = main(["-q", "evaluate", str(model), "--out", str(tmp_path / "c"), "--data", str(data), "--split", "val",
               "--num-inputs", "2", "--num-outputs", "3", "--fid-outputs-per-input", "1", "--num-examples", "0",
               "--normals-metrics", "on", "--normals-outputs-per-input", "2", "--pca-dims", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "pixelnn: normals mean/median/RMSE" in out
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["settings"]["normals_outputs_per_input"] == 2 and m["normals"]["enabled"]
    assert main(["evaluate", str(model), "--out", str(tmp_path / "d"), "--normals-outputs-per-input", "0"]) == 2
    assert "--normals-outputs-per-input must be an integer >= 1, got 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the real face mesh


def _zip_photos(zip_path, n, size=96):
    from PIL import Image

    from pixelnn.data.images import fit_image

    with zipfile.ZipFile(zip_path) as z:
        names = sorted(x for x in z.namelist() if x.lower().endswith(".jpg"))[:n]
        import io

        return np.stack([fit_image(Image.open(io.BytesIO(z.read(x))).convert("RGB"), size, "crop",
                                   max_upscale=2.0) for x in names])


def test_looks_like_faces_tells_celeba_from_cats_and_shoes(shared_data, monkeypatch):
    pytest.importorskip("tflite")
    from pixelnn.models.facemesh import model_path

    monkeypatch.setattr(A, "estimate_face_normals", REAL_ESTIMATE)

    try:
        model_path()
    except PixelNNError as e:
        pytest.skip(str(e))
    assert A.looks_like_faces(_zip_photos(shared_data / "celeba-10k.zip", 6))
    assert not A.looks_like_faces(_zip_photos(shared_data / "afhq-cat.zip", 6))
    assert not A.looks_like_faces(_zip_photos(shared_data / "ut-zap50k-images-subset.zip", 6))
