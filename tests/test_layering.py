"""Import direction: the metrics package ``pixelnn.evaluation`` sits below the pipeline, the baselines and
training (which import its metrics), so nothing it imports, directly or through other pixelnn modules, may
run back up to them. The ``pixelnn evaluate`` orchestrator lives above both, in ``pixelnn.evaluate``.

Static (AST) walk, function-level imports included: a lazy ``from pixelnn.pipeline import ...`` inside a
metric function counts as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pixelnn

SRC = Path(pixelnn.__file__).resolve().parent.parent  # .../src
METRICS = SRC / "pixelnn" / "evaluation"
#: Modules above the metrics: none of them may be reached from pixelnn.evaluation.
ABOVE = ("pixelnn.pipeline", "pixelnn.baselines", "pixelnn.training", "pixelnn.library", "pixelnn.cli",
         "pixelnn.evaluate", "pixelnn.synthesize", "pixelnn.report", "pixelnn.web", "pixelnn.demo")


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_pixelnn_modules(path: Path, source: str | None = None) -> set[str]:
    """The ``pixelnn`` modules one source file imports (anywhere in it, relative imports resolved)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    source = path.read_text() if source is None else source
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                mod = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from pixelnn import edges`: the names may be submodules
            found.update(f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}"))
    return {m for m in found if m == "pixelnn" or m.startswith("pixelnn.")}


def _is_above(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ABOVE)


def test_metrics_package_imports_nothing_above_it():
    files = sorted(METRICS.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "lpips.py", "fid.py", "spectrum.py", "faithfulness.py",
                                       "coherence.py", "image_metrics.py"}
    # direct imports of each metrics module
    direct = {f.name: sorted(m for m in imported_pixelnn_modules(f) if _is_above(m)) for f in files}
    assert not any(direct.values()), f"pixelnn.evaluation imports upward: {direct}"
    # and transitively, through whatever pixelnn modules they import
    seen: dict[str, list[str]] = {_module_name(f): [_module_name(f)] for f in files}
    todo = list(seen)
    while todo:
        name = todo.pop()
        f = _module_file(name)
        if f is None:
            continue
        for m in imported_pixelnn_modules(f):
            if m not in seen:
                seen[m] = seen[name] + [m]
                todo.append(m)
    bad = {m: " -> ".join(chain) for m, chain in seen.items() if _is_above(m)}
    assert not bad, f"pixelnn.evaluation reaches modules above it: {bad}"


def test_the_orchestrator_lives_above_the_metrics():
    assert not (METRICS / "evaluate.py").exists()
    assert (SRC / "pixelnn" / "evaluate.py").is_file()
    uses = imported_pixelnn_modules(SRC / "pixelnn" / "evaluate.py")
    assert "pixelnn.pipeline" in uses and "pixelnn.evaluation.lpips" in uses


def test_the_walk_sees_lazy_and_relative_imports():
    """The checker itself: an upward import inside a function, a relative one, or a submodule named in
    ``from pixelnn import ...`` is found (on sources given as text; nothing is written)."""
    probe = METRICS / "probe.py"
    lazy = "def f():\n    from pixelnn.pipeline import PixelNNPipeline\n"
    relative = "from ..baselines import pix2pix\nfrom . import lpips\n"
    named = "from pixelnn import training, errors\n"
    assert _is_above("pixelnn.pipeline") and not _is_above("pixelnn.evaluation.lpips")
    assert "pixelnn.pipeline" in imported_pixelnn_modules(probe, lazy)
    assert {"pixelnn.baselines", "pixelnn.baselines.pix2pix", "pixelnn.evaluation.lpips"} <= \
        imported_pixelnn_modules(probe, relative)
    assert {"pixelnn.training", "pixelnn.errors"} <= imported_pixelnn_modules(probe, named)
