"""``prepare --limit N``: a seeded random sample stratified by the first label (issue 18), ``--sample first`` as before."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pixelnn.cli import main
from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset
from pixelnn.data.prepare import largest_remainder, prepare_dataset
from pixelnn.errors import PixelNNError
from tests.test_prepare import encode

TASK = TaskConfig(name="superres", size=32, factor=8)
#: A labelled source: 60 + 30 + 10 images in three category folders.
SIZES = {"Alpha": 60, "Beta": 30, "Gamma": 10}


def png(seed: int) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 256, (36, 36, 3), dtype=np.uint8))


def labelled_zip(path: Path, sizes: dict[str, int] = SIZES, bad: dict[str, int] | None = None) -> Path:
    """``coll/<cat>/<i>.png`` for each category, the first ``bad[cat]`` of them (in path order) corrupt."""
    bad = bad or {}
    with zipfile.ZipFile(path, "w") as zf:
        for c, (cat, n) in enumerate(sizes.items()):
            for i in range(n):
                zf.writestr(f"coll/{cat}/{i:03d}.png", b"garbage" if i < bad.get(cat, 0) else png(100 * c + i))
    return path


def kept(out: Path) -> list[dict]:
    ds = Dataset(out)
    return [r for s in ("train", "val", "test") if ds.manifest["counts"][s] for r in ds.split(s).records]


def by_label(records: list[dict], key: str = "level1") -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["labels"][key]] = counts.get(r["labels"][key], 0) + 1
    return counts


def test_largest_remainder_is_proportional_and_exact():
    rng = np.random.default_rng(0)
    assert largest_remainder([60, 30, 10], 20, rng) == [12, 6, 2]
    assert largest_remainder([60, 30, 10], 7, rng) in ([4, 2, 1], [4, 3, 0], [5, 2, 0])
    assert sum(largest_remainder([5, 5, 5], 7, rng)) == 7
    assert largest_remainder([2, 1], 10, rng) == [2, 1]  # never more than a group holds
    assert largest_remainder([1000, 1, 1, 1], 3, np.random.default_rng(1)) == [3, 0, 0, 0]


def test_random_limit_is_stratified_by_the_first_label(tmp_path):
    src = labelled_zip(tmp_path / "src.zip")
    rep = prepare_dataset(src, tmp_path / "o", TASK, fit="crop", limit=20, progress=False)
    recs = kept(tmp_path / "o")
    assert rep.total == 20 and by_label(recs) == {"Alpha": 12, "Beta": 6, "Gamma": 2}
    assert rep.kept_labels == {"Alpha": 12, "Beta": 6, "Gamma": 2}
    # a sample, not the first images of each folder
    assert {r["source"] for r in recs} != {f"coll/{c}/{i:03d}.png" for c, n in (("Alpha", 12), ("Beta", 6),
                                                                                 ("Gamma", 2)) for i in range(n)}
    # the dataset keeps sorted path order within every split
    ds = Dataset(tmp_path / "o")
    for s in ("train", "val", "test"):
        if ds.manifest["counts"][s]:
            sources = [r["source"] for r in ds.split(s).records]
            assert sources == sorted(sources)
    assert "kept by level1: Alpha 12, Beta 6, Gamma 2" in rep.summary()
    assert "random sample (seed 0, stratified by level1)" in rep.summary()


def test_random_limit_is_deterministic_per_seed_and_independent_of_threads(tmp_path):
    src = labelled_zip(tmp_path / "src.zip", bad={"Alpha": 5, "Gamma": 3})
    sets = {}
    for name, seed, workers in (("a", 0, 1), ("b", 0, 4), ("c", 0, 3), ("d", 1, 2)):
        prepare_dataset(src, tmp_path / name, TASK, fit="crop", limit=25, progress=False, seed=seed, workers=workers)
        sets[name] = [r["id"] for r in kept(tmp_path / name)]
    assert sets["a"] == sets["b"] == sets["c"]
    assert set(sets["d"]) != set(sets["a"]) and len(sets["d"]) == 25
    a = json.loads((tmp_path / "a" / "dataset.json").read_text())
    b = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert a["subset"] == b["subset"]
    for name in sets:  # the photos themselves too
        assert np.array_equal(Dataset(tmp_path / name).split("train").photos,
                              Dataset(tmp_path / ("a" if name != "d" else "d")).split("train").photos)


def test_unusable_images_are_replaced_within_their_label_then_by_the_others(tmp_path):
    # Gamma holds 10 images of which 9 are corrupt: its share (2 of 20) is 1 usable + 1 passed on
    src = labelled_zip(tmp_path / "src.zip", bad={"Beta": 4, "Gamma": 9})
    rep = prepare_dataset(src, tmp_path / "o", TASK, fit="crop", limit=20, progress=False)
    counts = by_label(kept(tmp_path / "o"))
    assert rep.total == 20 and counts["Gamma"] == 1 and counts["Beta"] == 6 and counts["Alpha"] == 13
    assert sum(rep.skipped.values()) >= 9  # Gamma's 9 bad ones all tried, and the Beta ones drawn
    # more wanted than usable: every usable image
    rep = prepare_dataset(src, tmp_path / "all", TASK, fit="crop", limit=95, progress=False)
    assert rep.total == 100 - 13 and by_label(kept(tmp_path / "all")) == {"Alpha": 60, "Beta": 26, "Gamma": 1}


def test_sample_first_is_the_old_behaviour(tmp_path):
    src = labelled_zip(tmp_path / "src.zip", bad={"Alpha": 2})
    rep = prepare_dataset(src, tmp_path / "o", TASK, fit="crop", limit=20, progress=False, sample="first")
    recs = kept(tmp_path / "o")
    assert sorted(r["source"] for r in recs) == [f"coll/Alpha/{i:03d}.png" for i in range(2, 22)]
    assert rep.subset["method"] == "first" and rep.subset["seed"] is None and rep.subset["stratified_by"] is None
    # and without a limit the sample does not matter: the same dataset either way
    prepare_dataset(src, tmp_path / "r", TASK, fit="crop", progress=False)
    prepare_dataset(src, tmp_path / "f", TASK, fit="crop", progress=False, sample="first", seed=5)
    for s in ("train", "val", "test"):
        r, f = Dataset(tmp_path / "r"), Dataset(tmp_path / "f")
        if r.manifest["counts"][s]:
            assert r.split(s).records == f.split(s).records
            assert np.array_equal(r.split(s).photos, f.split(s).photos)


def test_manifest_records_the_draw(tmp_path):
    src = labelled_zip(tmp_path / "src.zip")
    prepare_dataset(src, tmp_path / "o", TASK, fit="crop", limit=10, progress=False, seed=7)
    sub = json.loads((tmp_path / "o" / "dataset.json").read_text())["subset"]
    assert sub == {"method": "random", "seed": 7, "limit": 10, "source_images": 100, "stratified_by": "level1",
                   "kept": 10, "label_key": "level1", "label_values_kept": 3, "label_values_source": 3,
                   "label_counts": {"Alpha": 6, "Beta": 3, "Gamma": 1}}
    prepare_dataset(src, tmp_path / "all", TASK, fit="crop", progress=False)
    sub = json.loads((tmp_path / "all" / "dataset.json").read_text())["subset"]
    assert sub["method"] == "all" and sub["seed"] is None and sub["limit"] is None and sub["kept"] == 100


def test_partial_label_coverage_is_one_warning(tmp_path, caplog):
    src = labelled_zip(tmp_path / "src.zip")
    with caplog.at_level(logging.WARNING, logger="pixelnn"):
        prepare_dataset(src, tmp_path / "first", TASK, fit="crop", limit=10, progress=False, sample="first")
    warned = [r.getMessage() for r in caplog.records if "cover" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "cover 1 of the 3 level1 values" in warned[0] and "Beta" in warned[0] and "--sample random" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixelnn"):  # a stratified sample of 10 covers all three
        prepare_dataset(src, tmp_path / "random", TASK, fit="crop", limit=10, progress=False)
        prepare_dataset(src, tmp_path / "all", TASK, fit="crop", progress=False)
    assert not [r for r in caplog.records if "cover" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="pixelnn"):  # 2 images cannot cover 3 values
        rep = prepare_dataset(src, tmp_path / "two", TASK, fit="crop", limit=2, progress=False)
    assert [r for r in caplog.records if "cover 2 of the 3 level1 values" in r.getMessage()]
    assert "(2 of 3 values)" in rep.summary()


def test_unlabelled_source_is_a_plain_seeded_sample(tmp_path):
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        for i in range(40):
            zf.writestr(f"{i:03d}.png", png(i))
    a = prepare_dataset(tmp_path / "src.zip", tmp_path / "a", TASK, fit="crop", limit=8, progress=False)
    prepare_dataset(tmp_path / "src.zip", tmp_path / "b", TASK, fit="crop", limit=8, progress=False)
    ids = [r["id"] for r in kept(tmp_path / "a")]
    assert ids == [r["id"] for r in kept(tmp_path / "b")] and len(ids) == 8
    assert ids != [f"{i:03d}" for i in range(8)]
    assert a.kept_labels == {} and a.subset["stratified_by"] is None and "kept by" not in a.summary()


def test_bad_sample_options(tmp_path):
    src = labelled_zip(tmp_path / "src.zip")
    with pytest.raises(PixelNNError, match="invalid sample 'every'; valid: random, first"):
        prepare_dataset(src, tmp_path / "o", TASK, limit=3, sample="every", progress=False)
    with pytest.raises(PixelNNError, match="seed must be an integer >= 0"):
        prepare_dataset(src, tmp_path / "o", TASK, limit=3, seed=-1, progress=False)


def test_cli_sample_and_seed(tmp_path, capsys):
    src = labelled_zip(tmp_path / "src.zip")
    assert main(["-q", "prepare", str(src), "--out", str(tmp_path / "o"), "--task", "superres", "--size", "32",
                 "--fit", "crop", "--limit", "10", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "random sample (seed 3, stratified by level1)" in out and "kept by level1: Alpha 6, Beta 3, Gamma 1" in out
    assert main(["-q", "prepare", str(src), "--out", str(tmp_path / "f"), "--task", "superres", "--size", "32",
                 "--fit", "crop", "--limit", "10", "--sample", "first"]) == 0
    assert "the first usable images in path order" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(src), "--out", str(tmp_path / "x"), "--task", "superres", "--sample", "some"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'some'" in err
