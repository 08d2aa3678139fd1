"""Label transfer through the correspondences (``pixelnn transfer``) and label sources (``pixelnn labels``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.cli import main
from pixelnn.errors import PixelNNError
from pixelnn.labels import LabelDir, foreground_masks, id_to_relpath, read_label_image
from pixelnn.pipeline import MANIFEST_FORMAT
from pixelnn.transfer import (consensus, iou, overlay, read_correspondences, read_transfer, transfer_labels,
                              transfer_result)

from .conftest import make_tiny_library

S = 8


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def fake_result(d: Path, ids: list[str], index: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> Path:
    """A result folder as ``pixelnn synthesize`` writes it, with hand-made correspondences (O, S, S)."""
    d.mkdir(parents=True)
    o = len(index)
    files = [f"output_{i + 1:03d}.png" for i in range(o)]
    rng = np.random.default_rng(0)
    for f in files:
        Image.fromarray(rng.integers(0, 256, (index.shape[1], index.shape[2], 3), dtype=np.uint8)).save(d / f)
    Image.fromarray(np.full((index.shape[1], index.shape[2], 3), 200, np.uint8)).save(d / "stage1.png")
    np.savez_compressed(d / "correspondences.npz", library_position=index.astype(np.int64) + 100,
                        exemplar_index=index.astype(np.int16), source_y=sy.astype(np.int16),
                        source_x=sx.astype(np.int16), similarity=np.ones(index.shape, np.float32),
                        exemplar_ids=np.array(ids))
    (d / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "version": 2,
                                                 "outputs": [{"file": f} for f in files]}))
    return d


def identity(o: int, k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every output pixel copied from the same pixel of exemplar ``k``."""
    yy, xx = np.mgrid[0:S, 0:S]
    return np.full((o, S, S), k), np.broadcast_to(yy, (o, S, S)).copy(), np.broadcast_to(xx, (o, S, S)).copy()


# ---------------------------------------------------------------------------------------------- arrays
def test_hand_made_correspondence_gives_the_expected_labels():
    ex = np.zeros((2, 3, 3), np.int64)
    ex[0] = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    ex[1] = ex[0] + 10
    index = np.array([[[0, 1], [1, 0]]])  # (1, 2, 2): one 2x2 output
    sy = np.array([[[0, 2], [1, 2]]])
    sx = np.array([[[0, 2], [0, 1]]])
    out = transfer_labels(ex, index, sy, sx)
    assert out.shape == (1, 2, 2)
    assert out.tolist() == [[[0, 18], [13, 7]]]  # ex0[0,0], ex1[2,2], ex1[1,0], ex0[2,1]
    with pytest.raises(PixelNNError, match="source_x 3 is outside"):
        transfer_labels(ex, index, sy, sx + 1)
    with pytest.raises(PixelNNError, match="exemplar index 2 is outside"):
        transfer_labels(ex, index + 1, sy, sx)
    with pytest.raises(PixelNNError, match="differ in shape"):
        transfer_labels(ex, index, sy[:, :1], sx)


def test_consensus_and_agreement_on_a_known_vote():
    # 4 outputs, 1 x 4 pixels: a 2-2 tie, a 3-1 majority, unanimity, and a 2-1-1 plurality
    labels = np.array([[[1, 3, 0, 5]], [[1, 3, 0, 5]], [[2, 3, 0, 4]], [[2, 0, 0, 6]]])
    label, agreement = consensus(labels)
    assert label.tolist() == [[1, 3, 0, 5]]  # the tie goes to the smallest class id
    assert np.allclose(agreement, [[0.5, 0.75, 1.0, 0.5]]) and agreement.dtype == np.float32
    label2, agreement2 = consensus(labels, num_classes=7)
    assert np.array_equal(label2, label) and np.array_equal(agreement2, agreement)
    with pytest.raises(PixelNNError, match="class ids must be 0..3"):
        consensus(labels, num_classes=4)
    one, agree = consensus(labels[:1])
    assert np.array_equal(one, labels[0]) and (agree == 1).all()


def test_overlay_blends_colours_and_iou():
    img = np.full((2, 2, 3), 100, np.uint8)
    lut = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    ov = overlay(img, np.array([[0, 1], [1, 0]]), lut, alpha=0.5)
    assert ov[0, 0].tolist() == [50, 50, 50] and ov[0, 1].tolist() == [150, 100, 50]
    a = np.array([[1, 1], [0, 0]], bool)
    assert iou(a, a) == 1.0 and iou(a, ~a) == 0.0 and iou(a, np.array([[1, 0], [0, 0]], bool)) == 0.5
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


# ---------------------------------------------------------------------------------------------- label folders
def test_id_to_relpath_mirrors_the_source_tree():
    assert id_to_relpath("ut-zap50k-images/Boots/Ankle/A. Testoni/7999255.363731") == \
        Path("ut-zap50k-images/Boots/Ankle/A. Testoni/7999255.363731.png")
    assert id_to_relpath("img001") == Path("img001.png")
    for bad in ("../x", "a//b", "a/./b", "", "a\\b", "a/"):
        with pytest.raises(PixelNNError, match="cannot name a label file"):
            id_to_relpath(bad)


def _rgb_labels() -> list[np.ndarray]:
    cols = np.array([[255, 0, 0], [0, 0, 255], [10, 200, 10]], np.uint8)
    a = np.zeros((S, S), int)
    a[:, 4:] = 1
    b = np.full((S, S), 2)
    b[:2] = 0
    return [cols[a], cols[b]]


def test_rgb_palette_round_trip_through_a_transfer(tmp_path, capsys):
    lab = tmp_path / "labels"
    ims = _rgb_labels()
    for name, im in zip(("shoes/a", "shoes/b"), ims):
        (lab / "shoes").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(lab / f"{name}.png")
    arr, classes = LabelDir(lab).load(["shoes/a", "shoes/b"], S)
    assert classes.kind == "rgb" and len(classes) == 3
    assert classes.colors.tolist() == [[0, 0, 255], [10, 200, 10], [255, 0, 0]]  # sorted by (R, G, B)
    for k in range(2):
        assert np.array_equal(np.asarray(classes.to_image(arr[k])), ims[k])
    # output 1 copies exemplar b as is, output 2 copies exemplar a mirrored left-right
    index, sy, sx = identity(2, 1)
    index[1], sx[1] = 0, S - 1 - sx[1]
    res = fake_result(tmp_path / "res", ["shoes/a", "shoes/b"], index, sy, sx)
    assert main(["-q", "transfer", str(res), "--labels", str(lab)]) == 0
    assert "2 label maps from 2 exemplars" in capsys.readouterr().out
    out = res / "labels"
    assert np.array_equal(np.asarray(Image.open(out / "label_001.png").convert("RGB")), ims[1])
    assert np.array_equal(np.asarray(Image.open(out / "label_002.png").convert("RGB")), ims[0][:, ::-1])
    m = json.loads((out / "transfer.json").read_text())
    assert m["kind"] == "rgb" and [c["color"] for c in m["classes"]] == classes.colors.tolist()
    assert m["consensus"]["tie_break"] == "smallest class id"
    assert sorted(m["exemplars"]) == ["shoes/a", "shoes/b"]
    t = read_transfer(out)
    assert t["labels"].shape == (2, S, S) and t["agreement"].shape == (S, S)
    assert np.array_equal(t["consensus"], consensus(t["labels"])[0])
    for f in ("consensus.png", "agreement.png", "consensus_overlay.png", "overlay_001.png", "overlay_002.png"):
        assert (out / f).is_file(), f
    # a declared palette fixes the ids; a colour it does not list is an error naming the file
    (lab / "labels.json").write_text(json.dumps({"format": "pixelnn-labels", "version": 1, "kind": "rgb", "classes": [
        {"name": "red", "color": [255, 0, 0]}, {"name": "blue", "color": [0, 0, 255]}]}))
    with pytest.raises(PixelNNError, match=r"b.png has colour \(10, 200, 10\), which .*labels.json does not list"):
        LabelDir(lab).load(["shoes/a", "shoes/b"], S)
    arr, classes = LabelDir(lab).load(["shoes/a"], S)
    assert classes.names == ["red", "blue"] and arr[0, 0, 0] == 0 and arr[0, 0, 7] == 1


def test_integer_masks_l_16_bit_and_palette_pngs(tmp_path):
    lab = tmp_path / "l"
    lab.mkdir()
    m = np.zeros((S, S), np.uint8)
    m[2:5, 2:5] = 7
    Image.fromarray(m, "L").save(lab / "a.png")
    Image.fromarray((m > 0).astype(np.uint8) * 255, "L").resize((2 * S, 2 * S), Image.NEAREST).save(lab / "b.png")
    arr, classes = LabelDir(lab).load(["a", "b"], S)  # b is 16x16: resized with nearest neighbour
    assert classes.kind == "index" and classes.ids.tolist() == [0, 7, 255]
    assert np.array_equal(arr[0], m) and np.array_equal(arr[1], (m > 0) * 255)
    assert classes.colors[0].tolist() == [0, 0, 0]
    assert np.array_equal(np.asarray(classes.to_image(arr[0])), m)
    # 16 bit
    big = m.astype(np.uint16) * 1000
    Image.fromarray(big).save(lab / "c.png")
    arr, classes = LabelDir(lab).load(["c"], S)
    assert arr.max() == 7000 and np.array_equal(np.asarray(classes.to_image(arr[0])), big)
    # palette PNG: indices are classes; the palette comes back
    p = Image.fromarray(m, "L").convert("P")
    pal = [0] * 768
    pal[21:24] = [9, 99, 199]
    p.putpalette(pal)
    pdir = tmp_path / "p"
    pdir.mkdir()
    p.save(pdir / "a.png")
    arr, classes = LabelDir(pdir).load(["a"], S)
    assert classes.ids.tolist() == [0, 7] and classes.colors[1].tolist() == [9, 99, 199]
    back = classes.to_image(arr[0])
    assert back.mode == "P" and np.array_equal(np.asarray(back), m)
    assert np.array_equal(np.asarray(back.convert("RGB"))[3, 3], [9, 99, 199])


def test_bad_label_images_are_one_line_errors_naming_the_file(tmp_path, capsys):
    index, sy, sx = identity(2, 0)
    res = fake_result(tmp_path / "res", ["x/a"], index, sy, sx)
    lab = tmp_path / "lab"
    (lab / "x").mkdir(parents=True)

    def transfer(*extra: str) -> str:
        assert main(["-q", "transfer", str(res), "--labels", str(lab), *extra]) == 2
        return _one_line_error(capsys)

    assert "no label image" in transfer() and str(lab / "x" / "a.png") in transfer()
    assert main(["-q", "transfer", str(res), "--labels", str(tmp_path / "none")]) == 2
    assert "no label folder" in _one_line_error(capsys)
    bad = lab / "x" / "a.png"
    for make, match in [
        (lambda: bad.write_bytes(b"\x89PNG\r\n\x1a\n not really"), "cannot read label image"),
        (lambda: Image.fromarray(np.zeros((S, S + 1), np.uint8)).save(bad), "is 9x8; label images must be square"),
        (lambda: Image.fromarray(np.zeros((S, S, 4), np.uint8)).save(bad), "has transparent pixels"),
        (lambda: Image.fromarray(np.zeros((S, S, 2), np.uint8), "LA").save(bad), "has mode LA"),
        (lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(bad),
         "colours (at most 256)"),
    ]:
        make()
        err = transfer()
        assert match in err and str(bad) in err, (match, err)
    Image.fromarray(np.full((S, S), 3, np.uint8)).save(bad)
    (lab / "labels.json").write_text(json.dumps({"format": "pixelnn-labels", "version": 1, "kind": "index",
                                                 "classes": [{"id": 0, "color": [0, 0, 0]}]}))
    err = transfer()
    assert "has class 3, which" in err and str(bad) in err
    (lab / "labels.json").write_text(json.dumps({"format": "pixelnn-labels", "version": 1, "kind": "rgb"}))
    assert "is an index image but" in transfer()
    (lab / "labels.json").write_text("{oops")
    assert "not valid JSON (line 1, column 2)" in transfer()
    (lab / "labels.json").unlink()
    assert main(["-q", "transfer", str(res), "--labels", str(lab)]) == 0
    capsys.readouterr()
    assert "already exists; pass --overwrite" in transfer()
    assert main(["-q", "transfer", str(res), "--labels", str(lab), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["-q", "transfer", str(tmp_path), "--labels", str(lab)]) == 2
    assert "is not a synthesis result" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------- sources
def test_foreground_of_a_synthetic_object_on_white():
    rng = np.random.default_rng(0)
    n = 48
    photo = (255 - rng.integers(0, 4, (n, n, 3))).astype(np.uint8)  # white with JPEG-like noise
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - 24, xx - 20)
    disk, hole = r < 14, r < 5
    photo[disk & ~hole] = [120, 60, 30]  # a brown ring ...
    photo[hole] = 250  # ... around a white hole, which is foreground (filled)
    photo[2, 45] = [0, 0, 0]  # a speck: dropped
    photo[10:14, 38:46] = [255, 255, 238]  # a near-white cream patch touching nothing: foreground (not white)
    mask = foreground_masks(photo)
    expected = disk.copy()
    expected[10:14, 38:46] = True
    assert mask.dtype == bool and np.array_equal(mask, expected)
    # a batch, an all-white photo (no foreground) and one without white (all foreground)
    both = foreground_masks(np.stack([photo, np.full_like(photo, 255), np.zeros_like(photo)]))
    assert np.array_equal(both[0], expected) and not both[1].any() and both[2].all()
    # a cream patch counts as white with a lower threshold, and then joins the background at the border
    lower = foreground_masks(photo, threshold=230)
    assert not lower[10:14, 38:46].any() and np.array_equal(lower, disk)


def test_labels_face_counts_photos_without_a_face(tmp_path, monkeypatch, capsys):
    pytest.importorskip("faiss")
    from pixelnn import normals

    model, _ = make_tiny_library(tmp_path)

    class Fake:
        def __init__(self, photos):
            n, h, w = photos.shape[:3]
            self.masks = np.zeros((n, h, w), bool)
            self.masks[:, 8:20, 10:22] = True
            self.found = np.ones(n, bool)
            self.found[::5] = False
            self.masks[~self.found] = False

    monkeypatch.setattr(normals, "normal_maps", lambda photos, device="cpu", batch_size=64: Fake(photos))
    out = tmp_path / "faces"
    assert main(["-q", "labels", "face", str(model), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    meta = json.loads((out / "labels.json").read_text())
    assert meta["no_face"] == 6 and meta["images"] == 26 and "no face: 6" in line
    assert [c["name"] for c in meta["classes"]] == ["background", "face"]
    assert not np.asarray(Image.open(out / "a000.png")).any()  # positions 0, 5, 10, ...: no face
    assert np.asarray(Image.open(out / "a001.png"))[8:20, 10:22].all()
    assert main(["-q", "labels", "face", str(model), "--out", str(out)]) == 2
    assert "already exists" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------- end to end
def test_cli_synthesize_then_transfer_end_to_end(tmp_path, capsys):
    pytest.importorskip("faiss")
    import torch

    from pixelnn.data.dataset import Dataset
    from pixelnn.io import save_image

    torch.set_num_threads(1)
    model, data = make_tiny_library(tmp_path)
    x = np.asarray(Dataset(data).split("val").inputs[0])
    save_image(tmp_path / "in.png", x)
    res_root = tmp_path / "res"
    rc = main(["-q", "synthesize", str(tmp_path / "in.png"), "--model", str(model), "--out", str(res_root),
               "--num-outputs", "6", "--pca-dims", "16"])
    assert rc == 0, capsys.readouterr().err
    lab = tmp_path / "fg"
    # the synthetic photos' background is light grey (229): white from 220 up
    assert main(["-q", "labels", "foreground", str(model), "--out", str(lab), "--threshold", "220"]) == 0
    assert "foreground labels of 26 exemplars" in capsys.readouterr().out
    meta = json.loads((lab / "labels.json").read_text())
    assert meta["kind"] == "index" and meta["params"]["threshold"] == 220
    res = res_root / "in"
    assert main(["-q", "transfer", str(res), "--labels", str(lab), "--out", str(tmp_path / "t")]) == 0
    assert "6 label maps" in capsys.readouterr().out
    out = tmp_path / "t"
    m = json.loads((out / "transfer.json").read_text())
    assert m["num_outputs"] == 6 and len(m["outputs"]) == 6
    # every label map is the label of the exemplar pixel named by the correspondences
    z = np.load(res / "correspondences.npz")
    ids = [str(i) for i in z["exemplar_ids"]]
    ex = np.stack([np.asarray(Image.open(lab / f"{i}.png")) for i in ids])
    expected = ex[z["exemplar_index"].astype(int), z["source_y"].astype(int), z["source_x"].astype(int)]
    for o in range(6):
        assert np.array_equal(np.asarray(Image.open(out / f"label_{o + 1:03d}.png")), expected[o])
    label, agreement = consensus(expected)
    assert np.array_equal(np.asarray(Image.open(out / "consensus.png")), label)
    assert np.array_equal(np.asarray(Image.open(out / "agreement.png")), np.rint(agreement * 255).astype(np.uint8))
    assert m["consensus"]["mean_agreement"] == round(float(agreement.mean()), 5)
    assert set(m["exemplars"]) <= set(ids)
    # the library function agrees with the files, and with library positions and the whole library's labels
    t = transfer_result(read_correspondences(res), LabelDir(lab))
    assert np.array_equal(t.labels, expected)
    from pixelnn.zarr_store import open_library

    lib = open_library(model / "library")
    all_labels = np.stack([np.asarray(Image.open(lab / f"{i}.png")) for i in lib.ids_of(np.arange(len(lib)))])
    assert np.array_equal(transfer_labels(all_labels, z["library_position"], z["source_y"], z["source_x"]), expected)
    # in memory: the pipeline's result gives the same correspondences as its folder
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.transfer import Correspondences

    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16, device="cpu")
    mem = Correspondences.from_result(pipe(x, num_outputs=6))
    disk = read_correspondences(res)
    for name in ("exemplar_index", "library_position", "source_y", "source_x"):
        assert np.array_equal(getattr(mem, name), getattr(disk, name)), name
    assert mem.exemplar_ids == disk.exemplar_ids and mem.output_files == disk.output_files
    assert np.array_equal(transfer_result(mem, LabelDir(lab)).consensus, label)
    # several results at once: DIR/<result name>
    assert main(["-q", "transfer", str(res), "--labels", str(lab), "--out", str(tmp_path / "many")]) == 0
    assert (tmp_path / "many" / "transfer.json").is_file()
    assert main(["-q", "transfer", str(res), str(res), "--labels", str(lab), "--out", str(tmp_path / "x")]) == 2
    assert "same name" in _one_line_error(capsys)
    assert read_label_image(out / "label_001.png").kind == "index"
