"""Quiet by default (issue 18): only PixelNN's progress and warnings reach the terminal; other libraries' INFO
(FAISS's loader: ``Could not load library with AVX2 support ...``) only with ``-v``. Real commands, in a subprocess,
as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pixelnn
from pixelnn.logs import THIRD_PARTY_LOGGERS, is_own

from .conftest import make_dataset, make_tiny_model_dir

#: A log line of another library below WARNING (the CLI's format is "LEVEL name: message").
FOREIGN_CHATTER = re.compile(r"^(INFO|DEBUG) (?!pixelnn[.:])\S+: ", re.MULTILINE)


def run_cli(*argv: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(pixelnn.__file__).resolve().parents[1]), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "pixelnn.cli", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    make_tiny_model_dir(root / "model")
    make_dataset(root / "data", n=12)
    return root


def test_index_prints_no_third_party_info_unless_verbose(tiny):
    pytest.importorskip("faiss")
    quiet = run_cli("index", "data", "--model", "model", "--device", "cpu", cwd=tiny)
    assert quiet.returncode == 0, quiet.stderr
    assert "indexed 8 exemplars" in quiet.stdout
    assert not FOREIGN_CHATTER.search(quiet.stderr), quiet.stderr
    assert "faiss" not in quiet.stderr and "Could not load library" not in quiet.stderr
    loud = run_cli("-v", "index", "data", "--model", "model", "--device", "cpu", "--overwrite", cwd=tiny)
    assert loud.returncode == 0, loud.stderr
    assert FOREIGN_CHATTER.search(loud.stderr), loud.stderr  # fsspec, numcodecs, faiss.loader... at DEBUG/INFO
    assert "faiss.loader" in loud.stderr


def test_a_library_that_raises_its_own_level_is_still_quiet(tmp_path):
    """A library may set its own logger to INFO (Ray does, on import): the CLI's handler still drops its INFO,
    keeps its warnings and PixelNN's INFO."""
    code = ("import logging, sys\n"
            "from pixelnn.logs import configure\n"
            "configure(verbose='-v' in sys.argv)\n"
            "lib = logging.getLogger('somelib.loader'); lib.setLevel(logging.INFO)\n"
            "lib.info('chatter'); lib.warning('a real warning')\n"
            "logging.getLogger('faiss.loader').info('Could not load library with AVX2 support')\n"
            "logging.getLogger('pixelnn.data.prepare').info('own progress')\n")
    r = run_cli(cwd=tmp_path, code=code)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["WARNING somelib.loader: a real warning", "INFO pixelnn.data.prepare: own progress"]
    r = run_cli(cwd=tmp_path, code=code.replace("sys.argv", "['-v']"))
    assert "INFO somelib.loader: chatter" in r.stderr and "INFO faiss.loader: Could not load library" in r.stderr


def test_third_party_loggers_named_by_the_issue_are_covered():
    for name in ("faiss", "ray", "gradio", "httpx", "urllib3", "matplotlib", "h5py", "numexpr"):
        assert name in THIRD_PARTY_LOGGERS
    assert is_own("pixelnn") and is_own("pixelnn.cli") and not is_own("pixelnnx") and not is_own("faiss.loader")
