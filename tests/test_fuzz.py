"""Fuzzing (issue 15, part 6): over 1,000 malformed inputs a run, across prepare, synthesize, the web app's
upload handlers and every command's options; each gives a success or a one-line error, never a traceback.

The inputs come from a seeded generator (:mod:`tests.fuzzing`), made in a temporary folder. ``pytest -s`` prints
the counts; ``benchmarks/fuzz.py`` runs the same campaign with other seeds and more inputs. Below the campaign,
one test per bug the fuzzing found (docs/reliability.md, section Fuzzing), so each stays fixed whatever the seed.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.cli import main
from pixelnn.config import TaskConfig
from pixelnn.errors import PixelNNError, printable

from .fuzzing import Tally, campaign, captured, photo, run_cli, write_tree

pytest.importorskip("faiss")

#: The campaign's seed in the test suite (benchmarks/fuzz.py takes others).
SEED = 0
MIN_INPUTS = 1000


@pytest.fixture(scope="module")
def tally(tmp_path_factory) -> Tally:
    import torch

    threads = torch.get_num_threads()
    try:
        t = campaign(tmp_path_factory.mktemp("fuzz"), seed=SEED, scale=1.0)
    finally:
        torch.set_num_threads(threads)
    print("\nfuzz campaign, seed", SEED)
    print("\n".join(t.lines()))
    return t


def test_fuzz_campaign_has_no_traceback(tally):
    assert tally.total_inputs >= MIN_INPUTS, tally.lines()
    assert not tally.tracebacks, "\n".join(tally.lines())


@pytest.mark.parametrize("area", ["decode", "prepare", "synthesize", "web", "cli-options"])
def test_every_area_tried_both_ways(tally, area):
    """Each area had cases that worked and cases that failed cleanly (the generator reaches both)."""
    assert tally.successes.get(area, 0) > 0 and tally.clean_errors.get(area, 0) > 0, tally.lines()


# ------------------------------------------------------------------------------------------ the bugs found
def cli(argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in this process as a terminal would (:func:`tests.fuzzing.captured`): (status, stdout, stderr)."""
    with captured() as box:
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, box["stdout"], box["stderr"]


def one_error_line(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv", [["prepare", "src", "--out", "o", "--task", "superres", "--threads", "100000"],
                                  ["train", "data", "--out", "m", "--threads", "20000"],
                                  ["serve", "--model", "m", "--threads", "1025"]])
def test_threads_are_capped(argv):
    """Bug 1: ``--threads 100000`` crashed torch (a segfault: OpenMP cannot start that many threads)."""
    line = one_error_line(*cli(argv)[::2])
    assert "--threads must be an integer between 1 and 1024" in line, line
    with pytest.raises(PixelNNError, match="threads must be between 1 and 1024"):
        from pixelnn.data.prepare import prepare_dataset

        prepare_dataset("nowhere", "out", TaskConfig(name="superres", size=16, factor=4), threads=100000)


def test_decoding_closes_multi_frame_files(tmp_path):
    """Bug 2: an animated GIF or multi-page TIFF left its file open (a ResourceWarning per input)."""
    from pixelnn.data.images import decode_image

    frames = [Image.new("P", (20, 20), i) for i in range(3)]
    gif, tif = tmp_path / "a.gif", tmp_path / "b.tif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    frames[0].convert("RGB").save(tif, save_all=True, append_images=[f.convert("RGB") for f in frames[1:]])
    import gc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in (gif, tif, str(gif)):
            assert decode_image(path).size == (20, 20)
        gc.collect()
    unclosed = [str(w.message) for w in caught if "unclosed file" in str(w.message)]
    assert not unclosed, unclosed


def test_only_image_formats_are_decoded(tmp_path):
    """Bug 3: any of Pillow's ~45 formats was decoded behind an image name, PostScript (through Ghostscript, an
    outside program, where installed) among them; now only PNG, JPEG, GIF, BMP, TIFF and WebP are."""
    from pixelnn.data.images import UnusableImage, decode_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    ppm = b"P6\n2 2\n255\n" + bytes(12)
    for data in (eps, ppm):
        with pytest.raises(UnusableImage, match="corrupt: not a PNG, JPEG, GIF, BMP, TIFF or WebP image"):
            decode_image(data)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")  # a PNG named .jpg is still read by its contents
    (tmp_path / "x.jpg").write_bytes(buf.getvalue())
    assert decode_image(tmp_path / "x.jpg").getpixel((0, 0)) == (1, 2, 3)


def test_pillow_notes_on_damaged_files_are_not_printed():
    """Bug 4: Pillow's UserWarning "Corrupt EXIF data" reached stderr for each such photo."""
    from pixelnn.data.images import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", exif=b"Exif\0\0II*\0\x08\0\0\0\x05\0\x0f\x01\x02\0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_image(buf.getvalue())
    assert not caught, [str(w.message) for w in caught]


def test_float_images_with_nan_decode_quietly():
    """Bug 4b: a float (F) TIFF with NaN pixels made numpy warn ("invalid value encountered in cast")."""
    from pixelnn.data.images import decode_image

    a = np.full((5, 5), np.nan, np.float32)
    a[0, 0] = 0.5
    buf = io.BytesIO()
    Image.fromarray(a, "F").save(buf, "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = np.asarray(decode_image(buf.getvalue()))
    assert rgb[0, 0, 0] == 128 and rgb[0, 1, 0] == 0


def test_names_with_newlines_stay_on_one_line(tmp_path):
    """Bug 5: a file or folder name with a newline (or a terminal escape) split the error line in two."""
    from pixelnn.pipeline import load_image_file

    bad = tmp_path / "new\nline\x1b[31m.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PixelNNError) as e:
        load_image_file(bad, 32)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value) and "new\\nline\\x1b[31m.png" in str(e.value)
    src = tmp_path / "src\nfolder"
    src.mkdir()
    (src / "a.png").write_bytes(b"garbage")
    rc, _, err = cli(["-q", "prepare", str(src), "--out", str(tmp_path / "out"), "--task", "superres"])
    assert "src\\nfolder" in one_error_line(rc, err)
    assert printable("a\tb\r\nc") == "a\\tb\\r\\nc" and printable("ünï 😀") == "ünï 😀"


def test_paths_that_are_not_utf8_print(tmp_path):
    """Bug 6: prepare wrote its dataset and then failed printing the summary (UnicodeEncodeError on stdout) when
    the source or output path was not UTF-8; stdout now writes such bytes as escapes."""
    rng = np.random.default_rng(0)
    src = Path(os.fsdecode(os.fsencode(tmp_path) + b"/photos-\xff"))
    write_tree(src, rng, 0, 4, extras=False)
    rc, out, err = cli(["-q", "prepare", str(src), "--out", str(tmp_path / "out-\udcfe"), "--task", "superres",
                        "--size", "32", "--factor", "4"])
    assert rc == 0, err
    assert "photos-\\udcff" in out and "out-\\udcfe" in out


def test_argparse_errors_are_one_line():
    """Bug 7: a bad option value (``--size abc``) printed argparse's usage block (up to 20 lines) above the error."""
    for argv, want in ((["prepare", "x", "--size", "abc"], "pixelnn prepare: error: argument --size: invalid int"),
                       (["synthesize", "x", "--top-k"], "pixelnn synthesize: error: argument --top-k: expected one"),
                       (["bogus"], "pixelnn: error: argument COMMAND: invalid choice: 'bogus'"),
                       (["train", "d", "--out", "m", "--nope\nx"], "unrecognized arguments: --nope\\nx")):
        rc, _, err = cli(argv)
        assert want in one_error_line(rc, err)


@pytest.mark.parametrize("argv", [["synthesize", "a" * 300 + ".png", "--model", "m", "--out", "o"],
                                  ["prepare", "src", "--out", "o/" + "b" * 256, "--task", "superres"],
                                  ["evaluate", "m", "--out", "o", "--options", "c" * 300],
                                  ["report", "r", "--out", "x\0y"]])
def test_paths_no_file_system_takes(argv):
    """Bug 12: a name over 255 bytes reached main's last line of defence as 'OSError: [Errno 36] File name too
    long' (or a NUL as 'ValueError: embedded null byte') from whatever looked at it first."""
    line = one_error_line(*cli(argv)[::2])
    assert "file name too long" in line or "NUL character" in line, line


def test_list_file_lines_no_file_system_takes(tmp_path):
    from pixelnn.synthesize import expand_inputs

    (tmp_path / "in.txt").write_bytes(b"d" * 300 + b".png\n")
    with pytest.raises(PixelNNError, match="cannot use input .*File name too long"):
        expand_inputs([tmp_path / "in.txt"])
    (tmp_path / "nul.txt").write_bytes(b"a\0b.png\n")
    with pytest.raises(PixelNNError, match=r"no such input file or folder: .*a\\x00b.png"):
        expand_inputs([tmp_path / "nul.txt"])


@pytest.mark.parametrize("argv", [["index", "../data", "--model", "../model", "--out", "", "--overwrite"],
                                  ["index", "../data", "--model", "../model", "--out", ".", "--overwrite"],
                                  ["labels", "foreground", "../model", "--out", "..", "--overwrite"],
                                  ["prepare", "../src", "--out", "./", "--task", "superres", "--overwrite"],
                                  ["library", "upgrade", "../lib", ".", "--overwrite"],
                                  ["synthesize", "x.png", "--model", "../model", "--out", " "]])
def test_out_never_replaces_the_current_folder(tmp_path, monkeypatch, argv):
    """Bug 13: ``--out ''`` (an unset shell variable) meant the current folder, and ``index --out .
    --overwrite`` replaced the current folder by a library, deleting the files in it."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    line = one_error_line(*cli(argv)[::2])
    assert "empty" in line or "is the current folder or one above it" in line, line
    assert (here / "keep.txt").read_text() == "mine"


def test_damaged_zip_version_field(tmp_path):
    """Bug 15: a zip whose central directory claims an unknown format version escaped open_source as
    NotImplementedError (benchmarks/fuzz.py, seed 6)."""
    import zipfile

    from pixelnn.data.sources import open_source

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("a.png", photo(np.random.default_rng(0), 16, 16))
    b = bytearray((tmp_path / "a.zip").read_bytes())
    i = b.rfind(b"PK\x01\x02")
    b[i + 6] = 235  # "version needed to extract": 23.5
    (tmp_path / "a.zip").write_bytes(bytes(b))
    with pytest.raises(PixelNNError, match="not a readable zip file: zip file version 23.5"):
        open_source(tmp_path / "a.zip")


def test_no_warning_above_an_error_of_too_few_exemplars(tmp_path):
    """Bug 16: ``--sets 31`` with 11 exemplars logged 'outputs needing more are dropped' above the error that
    none is left (benchmarks/fuzz.py, seed 6)."""
    from .conftest import make_tiny_library

    model, _ = make_tiny_library(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    with captured() as box:
        rc = main(["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "o"),
                   "--sets", "31"])
    assert "no output's exemplar set fits" in one_error_line(rc, box["stderr"]) and not box["handler"].records


def test_serve_checks_host_and_port_before_loading(tmp_path):
    """Bug 14: ``serve --host 'a b'`` (or a port in use) loaded the model and its library (seconds) and then failed
    at the bind with Gradio's message; now it is refused first (no DNS lookup: other names are left to the bind)."""
    import socket

    for host in ("a b", "", "http://x", "999.1.1.1", "😀"):
        line = one_error_line(*cli(["serve", "--model", str(tmp_path / "nowhere"), "--host", host])[::2])
        assert "is neither an IP address nor a host name" in line, line
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for host in ("127.0.0.1", "localhost"):
            line = one_error_line(*cli(["serve", "--model", str(tmp_path / "nowhere"), "--host", host, "--port",
                                        port])[::2])
            assert f"cannot serve on 127.0.0.1:{port}" in line, line
    from pixelnn.cli import check_serve_address

    check_serve_address("localhost", int(port))  # free again


def test_prepare_warnings_do_not_precede_its_error(tmp_path, caplog):
    """Bug 8: a prepare that found no usable image printed its warnings (refused zip entries, a malformed identity
    file) above the error line, which already counts the skipped files; a prepare that works still warns."""
    import zipfile

    good = photo(np.random.default_rng(1), 64, 64)
    for name, members in (("bad.zip", {"../../evil.png": good, "a.png": b"garbage"}),
                          ("mixed.zip", {"../../evil.png": good, "a.png": good})):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            for member, data in members.items():
                z.writestr(member, data)
            z.writestr("identity_CelebA.txt", "a.png 1\nnot three fields here\n")
    with captured() as box:
        rc = main(["-q", "prepare", str(tmp_path / "bad.zip"), "--out", str(tmp_path / "o"), "--task", "superres",
                   "--size", "16", "--factor", "4"])
    assert "1 unsafe path" in one_error_line(rc, box["stderr"]) and not box["handler"].records
    from pixelnn.data.prepare import prepare_dataset

    with caplog.at_level(logging.WARNING):
        prepare_dataset(tmp_path / "mixed.zip", tmp_path / "o2", TaskConfig(name="superres", size=16, factor=4),
                        progress=False)
    text = caplog.text
    assert "refused 1 zip entries" in text and "ignored 1 malformed lines" in text, text


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import torch

    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.web import WebApp

    from .conftest import make_tiny_library

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz-web")
    model, _ = make_tiny_library(root)
    return WebApp(PixelNNPipeline.from_model_dir(model, pca_dims=16), work_dir=root / "work")


@pytest.mark.parametrize("drawing", [np.array(3), np.zeros(5, np.uint8), "text", {"composite": [[1, 2], [3]]},
                                     {"composite": np.zeros((4, 4, 2), np.uint8)}, {"composite": np.array(["a"])},
                                     {"composite": np.zeros((0, 0, 4), np.uint8)}])
def test_sketch_pad_junk(app, drawing):
    """Bug 9: a sketch-pad value that is no image (a scalar, a 1-D or ragged array, text) raised IndexError or
    ValueError in :meth:`WebApp.read_drawing` and :meth:`WebApp.mask_from_drawing`."""
    with pytest.raises(PixelNNError):
        app.make_input("sketch", drawing=drawing)
    with pytest.raises(PixelNNError):
        app.mask_from_drawing(drawing if not isinstance(drawing, dict) else {"layers": [drawing["composite"]]})


def test_region_editor_junk(app):
    with pytest.raises(PixelNNError, match="layers differ in size"):
        app.mask_from_drawing({"layers": [np.ones((64, 64), np.uint8), np.ones((32, 32), np.uint8)]})
    with pytest.raises(PixelNNError, match="must be a list of images"):
        app.mask_from_drawing({"layers": "strokes"})
    # bug 9b: a label value with a newline split the region's error in two (seed 5 of benchmarks/fuzz.py)
    with pytest.raises(PixelNNError) as e:
        app.region_from_page(np.ones((app.size, app.size), bool), {"kind": ["\n"]})
    assert "\n" not in str(e.value) and "kind=\\n" in str(e.value), str(e.value)


def test_options_panel_junk(app):
    """Bug 10: the Options panel's numbers and menus took a huge integer (OverflowError), a number or complex as a
    label's values (TypeError) and a string of paths as one path per character."""
    for values in ({"top_k": 10**400}, {"highpass_sigma": -(10**400)}, {"seed": 10**400}):
        with pytest.raises(PixelNNError, match="must be a finite number"):
            app.options_from_page(values)
    for labels in ({"kind": 1.5}, {"kind": 1j}, ["kind"]):
        with pytest.raises(PixelNNError, match="expected a list|must be a mapping"):
            app.options_from_page({}, labels)
    assert app.options_from_page({}, {"kind": "blob"}).where == (("kind", ("blob",)),)  # one value, not 4 letters
    with pytest.raises(PixelNNError, match="no such image file"):
        app.options_from_page({}, None, "nowhere.png")


def test_huge_numbers_in_sets_and_windows():
    """Bug 11: ``--sets`` or ``--windows`` of over 4,300 digits raised ValueError (Python's integer-string limit);
    main's last line of defence printed it with the type name."""
    from pixelnn.options import SynthesisOptions, parse_sets, parse_windows

    with pytest.raises(PixelNNError, match="invalid exemplar set"):
        parse_sets("9" * 5000)
    for text in ("9" * 5000, str(10**30)):
        with pytest.raises(PixelNNError, match="invalid window"):
            SynthesisOptions(windows=parse_windows(text))
    with pytest.raises(PixelNNError, match="invalid window"):
        SynthesisOptions(windows=(10**400,))
    assert SynthesisOptions(windows=parse_windows("1,7x7,whole")).windows == (1, 7, None)


def test_run_cli_sees_the_last_line_of_defence(monkeypatch):
    """The harness counts an error that only main's last line of defence caught (an OSError/ValueError that no
    check turned into a PixelNNError) as a traceback, though main prints it as one line."""
    import pixelnn.cli as cli_module

    def broken(args):
        raise ValueError("a check missed this")

    monkeypatch.setattr(cli_module, "cmd_report", broken)
    t = Tally()
    run_cli(["report", "nowhere", "--out", "z"], t, "probe")
    assert t.tried["probe"] == 1 and len(t.tracebacks) == 1 and "last line of defence" in t.tracebacks[0][2]
    monkeypatch.undo()
    run_cli(["report", "nowhere", "--out", "z"], t, "probe")  # the real one: a clean error
    assert t.clean_errors["probe"] == 1 and len(t.tracebacks) == 1


def test_benchmark_script_runs(tmp_path):
    """benchmarks/fuzz.py (bigger runs, other seeds) starts and prints its table (here: the web area only)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(script.parents[1] / "src"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(script), "--seed", "3", "--scale", "0.2", "--areas", "web",
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tracebacks" in r.stdout and "total" in r.stdout, r.stdout
