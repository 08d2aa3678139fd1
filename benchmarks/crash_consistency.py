"""Crash consistency and concurrent writers: kill PixelNN's writers with SIGKILL and check nothing is lost.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/crash_consistency.py [--kills 20] [--seed 0]

Four writing commands run on tiny fixtures (tests/conftest.py) in forked children (a fork server that has
imported torch and PixelNN once, so a child starts in milliseconds and a random delay lands in the
command's work, not in Python's imports):

- ``prepare SRC --out DATA --overwrite`` over an existing dataset;
- ``index DATA --model MODEL --out LIB`` (a new store);
- ``index DATA --model MODEL --out LIB --add MORE`` on an existing store;
- ``train DATA --out MODEL --steps 24 --val-every 4`` (resuming from its checkpoints).

Each kill: the previous complete state is set up, the command starts, and after a seeded random delay
(uniform over the command's clean running time) it is killed with SIGKILL; a kill that comes after the
command finished does not count and is retried with another delay. Then, on every other kill, the state
is opened as the next command would (dataset, library, model and checkpoint), which must give the
previous complete state or the new one (or a one-line PixelNNError saying how to recover); then the
command is run again to completion, which must give the same result as a clean run (the same arrays and
records; the same library ids, photos and search results; training weights within 1e-5 of an
uninterrupted run) and leave no temporary entry behind. Four more kills land at fixed points
(``$PIXELNN_CRASH_AT``): between the two renames of a folder swap (prepare and index --overwrite),
between a training run's weights and its checkpoint, and between a library's new segments and its commit.

The concurrency check starts two ``index --add`` of different datasets on one store at the same time:
both must succeed, the second after waiting for the lock, and the store must hold every exemplar; with
``PIXELNN_LOCK_TIMEOUT=0`` the second is refused with one line and nothing is lost.

Prints: kills landed, states recovered (or found intact), refusals, corruptions (must be 0), seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
PRELOAD = ["torch", "numpy", "PIL.Image", "pixelnn.cli", "pixelnn.indexing", "pixelnn.zarr_store", "pixelnn.training",
           "pixelnn.data.prepare", "pixelnn.retrieval", "zarr", "pyarrow.parquet", "faiss", "safetensors.torch"]
#: Temporary names that must not survive the command run after a kill.
LEFTOVER_MARKS = (".tmp.", ".old.", ".trash.", ".building", ".tmp-")


# ------------------------------------------------------------------------------------------- children
def _child(argv: list[str], log_path: str, env: dict[str, str], cwd: str) -> None:
    os.environ.update(env)
    os.chdir(cwd)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a killed child would leak it
    from pixelnn.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    except BaseException:  # noqa: BLE001 - reported through the log and the exit status
        import traceback

        traceback.print_exc()
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Runner:
    """Runs ``pixelnn ARGV`` in forked children of a fork server that preloaded torch and PixelNN."""

    def __init__(self, work: Path):
        self.work = work
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.n = 0

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[Any, Path]:
        self.n += 1
        log = self.work / f"run{self.n:03d}.log"
        env = {"OMP_NUM_THREADS": "1", **(env or {})}
        p = self.ctx.Process(target=_child, args=(["-q", *argv], str(log), env, str(self.work)))
        p.start()
        return p, log

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str, float]:
        t0 = time.perf_counter()
        p, log = self.start(argv, env)
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
        return p.exitcode, log.read_text(errors="replace"), time.perf_counter() - t0

    def kill_after(self, argv: list[str], delay: float, env: dict[str, str] | None = None) -> tuple[bool, str]:
        """Start, sleep ``delay``, SIGKILL; ``(landed, log)``: landed is false when it had already exited."""
        p, log = self.start(argv, env)
        p.join(delay)
        landed = p.is_alive()
        if landed:
            p.kill()  # SIGKILL
        p.join()
        if env and env.get("PIXELNN_CRASH_AT"):
            landed = p.exitcode == -9
        return landed, log.read_text(errors="replace")


# ------------------------------------------------------------------------------------------- digests
def _h(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def dataset_digest(path: Path) -> str:
    import numpy as np

    from pixelnn.data.dataset import SPLITS, Dataset

    ds = Dataset(path)
    parts = []
    for s in SPLITS:
        d = ds.split(s)
        parts += [np.ascontiguousarray(d.photos).tobytes(), np.ascontiguousarray(d.inputs).tobytes(),
                  [{k: r[k] for k in ("id", "labels")} for r in d.records]]
    return _h(*parts)


def library_digest(path: Path, queries: Any) -> str:
    import numpy as np

    from pixelnn.zarr_store import open_library

    lib = open_library(path)
    pos = np.arange(len(lib))
    _, idx = lib.search(queries, 5)
    return _h(list(lib.ids), lib.take("photos", pos).tobytes(), lib.take("stage1", pos).tobytes(),
              [lib.ids_of([int(i) for i in row if i >= 0]) for row in idx])


def model_weights(model_dir: Path) -> dict[str, Any]:
    from pixelnn.models.regressor import Regressor

    return {k: v.clone() for k, v in Regressor.load(model_dir / "regressor.safetensors").state_dict().items()}


def same_weights(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-5) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


def leftovers(*folders: Path) -> list[str]:
    """Temporary entries still present (recursively) under ``folders``."""
    out = []
    for f in folders:
        if not f.exists():
            continue
        for p in [f, *f.rglob("*")]:
            if p.name.startswith(".") and any(m in p.name for m in LEFTOVER_MARKS):
                out.append(str(p))
    return out


def one_line_recovery(e: Exception) -> bool:
    text = str(e)
    return "\n" not in text.strip() and any(w in text for w in ("restore", "--restart", "retry", "mv ", "rebuild"))


# ------------------------------------------------------------------------------------------- scenarios
class Scenario:
    """A writing command, its previous complete state, and how to check a state."""

    name: str = ""

    def __init__(self, fx: "Fixtures"):
        self.fx = fx

    def setup(self) -> None:  # the previous complete state
        raise NotImplementedError

    argv: list[str] = []

    def observe(self) -> Any:  # the state as the next command opens it (a digest, or None for "nothing yet")
        raise NotImplementedError

    def allowed(self) -> list[Any]:  # states the opener may find after a kill
        return [self.prior, self.final]

    def same_as_clean(self) -> bool:
        return self.observe() == self.final

    def folders(self) -> list[Path]:
        raise NotImplementedError


class Prepare(Scenario):
    name = "prepare --overwrite"

    def setup(self) -> None:
        _reset(self.fx.data_dir)
        shutil.copytree(self.fx.prepared_old, self.fx.data_dir)

    @property
    def argv(self) -> list[str]:
        return ["prepare", str(self.fx.photos), "--out", str(self.fx.data_dir), "--task", "superres", "--size", "32",
                "--factor", "8", "--overwrite", "--val-fraction", "0.2", "--test-fraction", "0"]

    def observe(self) -> Any:
        from pixelnn.errors import PixelNNError

        try:
            return dataset_digest(self.fx.data_dir)
        except PixelNNError as e:
            if not self.fx.data_dir.exists() and "not a PixelNN dataset" in str(e):
                return "missing"
            raise

    def folders(self) -> list[Path]:
        return [self.fx.data_dir.parent]


class IndexNew(Scenario):
    name = "index (new store)"

    def setup(self) -> None:
        _reset(self.fx.lib_dir)

    @property
    def argv(self) -> list[str]:
        return ["index", str(self.fx.data_a), "--model", str(self.fx.model), "--out", str(self.fx.lib_dir),
                "--global-dims", "0", "--device", "cpu"]

    def observe(self) -> Any:
        from pixelnn.errors import PixelNNError

        try:
            return library_digest(self.fx.lib_dir, self.fx.queries)
        except PixelNNError as e:
            if "no exemplar library" in str(e) or "not a PixelNN library" in str(e):
                return None
            raise

    def folders(self) -> list[Path]:
        return [self.fx.lib_dir.parent]


class IndexAdd(IndexNew):
    name = "index --add"

    def setup(self) -> None:
        _reset(self.fx.lib_dir)
        shutil.copytree(self.fx.lib_a, self.fx.lib_dir)

    @property
    def argv(self) -> list[str]:
        return ["index", str(self.fx.data_a), "--model", str(self.fx.model), "--out", str(self.fx.lib_dir),
                "--add", str(self.fx.data_b), "--device", "cpu"]


class IndexOverwrite(IndexAdd):
    name = "index --overwrite"

    @property
    def argv(self) -> list[str]:
        return ["index", str(self.fx.data_b), "--model", str(self.fx.model), "--out", str(self.fx.lib_dir),
                "--overwrite", "--global-dims", "0", "--device", "cpu"]


class Train(Scenario):
    name = "train"

    def setup(self) -> None:
        _reset(self.fx.train_dir)

    @property
    def argv(self) -> list[str]:
        return ["train", str(self.fx.data_a), "--out", str(self.fx.train_dir), "--steps", "24", "--val-every", "4",
                "--sample-every", "1000", "--batch-size", "4", "--base-channels", "8", "--depth", "2",
                "--norm", "none", "--threads", "1", "--device", "cpu"]

    def observe(self) -> Any:
        """The model and its checkpoint open (each whole); the step of the checkpoint, or None before any."""
        import numpy as np

        from pixelnn.train_loop import load_train_state

        w = self.fx.train_dir / "regressor.safetensors"
        s = self.fx.train_dir / "train_state.safetensors"
        if not w.exists() and not s.exists():
            return None
        model_weights(self.fx.train_dir)  # the exported weights open
        if s.exists():
            _, step, _, _ = load_train_state(s, np.random.default_rng(0))
            return ("step", step)
        return ("weights only",)

    def allowed(self) -> list[Any]:
        return [None, ("weights only",)] + [("step", s) for s in range(0, 25, 4)]

    def same_as_clean(self) -> bool:
        return same_weights(model_weights(self.fx.train_dir), self.fx.train_final)

    def folders(self) -> list[Path]:
        return [self.fx.train_dir]


def _reset(path: Path) -> None:
    """Remove ``path`` and every temporary sibling of it (between kills)."""
    for p in [path, *path.parent.glob(f".{path.name}*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


# ------------------------------------------------------------------------------------------- fixtures
class Fixtures:
    """Tiny inputs (tests/conftest.py) and the clean results every kill is compared with."""

    def __init__(self, root: Path, runner: Runner):
        sys.path.insert(0, str(REPO))
        import numpy as np
        from PIL import Image

        from tests.conftest import make_dataset, make_tiny_model_dir, synthetic_photos

        self.root, self.runner = root, runner
        self.model = make_tiny_model_dir(root / "model")
        self.data_a = make_dataset(root / "data_a", n=30, seed=0)
        self.data_b = make_dataset(root / "data_b", n=14, seed=3, prefix="b")
        self.data_c = make_dataset(root / "data_c", n=14, seed=5, prefix="c")
        self.photos = root / "photos"
        self.photos.mkdir()
        # enough photos that prepare runs for a few tenths of a second: a random kill has room to land
        for i, im in enumerate(synthetic_photos(120, 48, seed=7)):
            Image.fromarray(im).save(self.photos / f"p{i:02d}.png")
        self.work = root / "work"
        self.work.mkdir()
        self.data_dir, self.lib_dir, self.train_dir = self.work / "data", self.work / "lib", self.work / "trained"
        from pixelnn.data.dataset import Dataset
        from pixelnn.models.regressor import Regressor, predict
        from pixelnn.retrieval import global_descriptors

        val = Dataset(self.data_a).split("val")
        stage1 = predict(Regressor.load(self.model / "regressor.safetensors"), np.asarray(val.inputs), 8)
        self.queries = global_descriptors(stage1, 8)
        # clean results
        self.times: dict[str, float] = {}
        self.prepared_old = root / "prepared_old"
        self._ok(["prepare", str(self.photos), "--out", str(self.prepared_old), "--task", "superres", "--size", "32",
                  "--factor", "8", "--limit", "12", "--val-fraction", "0.2", "--test-fraction", "0"])
        self.lib_a = root / "lib_a"
        self._ok(["index", str(self.data_a), "--model", str(self.model), "--out", str(self.lib_a), "--global-dims", "0",
                  "--device", "cpu"])

    def _ok(self, argv: list[str], env: dict[str, str] | None = None) -> float:
        code, log, seconds = self.runner.run(argv, env)
        if code != 0:
            raise RuntimeError(f"pixelnn {' '.join(argv)} failed ({code}): {log[-2000:]}")
        return seconds

    def clean(self, sc: Scenario) -> None:
        """Run a scenario's command once without a kill: its prior and final states and its duration."""
        sc.setup()
        sc.prior = sc.observe()
        sc.setup()
        self.times[sc.name] = self._ok(sc.argv)
        if isinstance(sc, Train):
            self.train_final = model_weights(self.train_dir)
            sc.prior = None
        sc.final = sc.observe()


# ------------------------------------------------------------------------------------------- the loop
def kill_loop(root: Path, kills: int = 20, seed: int = 0, targeted: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the kill loop; returns the figures (and ``problems``: one line per corruption)."""
    t_start = time.perf_counter()
    runner = Runner(root)
    fx = Fixtures(root, runner)
    scenarios = [Prepare(fx), IndexNew(fx), IndexAdd(fx), Train(fx)]
    overwrite = IndexOverwrite(fx)
    for sc in [*scenarios, overwrite]:
        fx.clean(sc)
    rng = random.Random(seed)
    stats = {"kills": 0, "not_landed": 0, "found_intact_or_recovered": 0, "refused_with_message": 0,
             "reruns_equal_to_clean": 0, "corruptions": 0, "targeted_kills": 0, "per_command": {}, "problems": []}
    plan = [(scenarios[i % len(scenarios)], None) for i in range(kills)]
    if targeted:
        plan += [(scenarios[0], "swap"), (overwrite, "swap"), (scenarios[3], "checkpoint"), (scenarios[2], "shard")]
    for n, (sc, point) in enumerate(plan):
        landed, tries = False, 0
        hi = max(0.1, fx.times[sc.name])
        while not landed and tries < 6:
            tries += 1
            sc.setup()
            if point:
                landed, child_log = runner.kill_after(sc.argv, 120, {"PIXELNN_CRASH_AT": point})
            else:
                delay = rng.uniform(0.02, hi)
                landed, child_log = runner.kill_after(sc.argv, delay)
                hi = max(0.03, delay)  # a miss: the command ran shorter than this here, draw the next kill sooner
            if not landed:
                stats["not_landed"] += 1
        if not landed:
            stats["problems"].append(f"{sc.name}: no kill landed in {tries} tries")
            stats["corruptions"] += 1
            continue
        stats["targeted_kills" if point else "kills"] += 1
        per = stats["per_command"].setdefault(sc.name, 0)
        stats["per_command"][sc.name] = per + 1
        where = f"{sc.name} kill {n + 1}{' at ' + point if point else ''}"
        bad = False
        if n % 2 == 0 or point:  # the next command opens the state
            try:
                state = sc.observe()
                if state not in sc.allowed():
                    stats["problems"].append(f"{where}: opened an unexpected state {state!r}")
                    bad = True
                else:
                    stats["found_intact_or_recovered"] += 1
            except Exception as e:  # noqa: BLE001
                if type(e).__name__ == "PixelNNError" and one_line_recovery(e):
                    stats["refused_with_message"] += 1
                else:
                    stats["problems"].append(f"{where}: opening failed: {type(e).__name__}: {e}")
                    bad = True
        code, out, _ = runner.run(sc.argv)  # the command again, to completion
        if code != 0:
            line = out.strip().splitlines()[-1] if out.strip() else ""
            stats["problems"].append(f"{where}: the re-run failed ({code}): {line}")
            bad = True
        else:
            try:
                if sc.same_as_clean():
                    stats["reruns_equal_to_clean"] += 1
                else:
                    stats["problems"].append(f"{where}: the re-run differs from a clean run")
                    bad = True
            except Exception as e:  # noqa: BLE001
                stats["problems"].append(f"{where}: the re-run's result does not open: {e}")
                bad = True
            left = leftovers(*sc.folders())
            if left:
                stats["problems"].append(f"{where}: temporary entries left after the re-run: {left[:3]}")
                bad = True
        stats["corruptions"] += int(bad)
        log(f"{where}: {'CORRUPT' if bad else 'ok'}")
    stats["seconds"] = round(time.perf_counter() - t_start, 1)
    stats["clean_seconds"] = {k: round(v, 2) for k, v in fx.times.items()}
    stats["fixtures"] = fx
    return stats


def concurrent_adds(fx: Fixtures, timeout: str | None = None) -> dict[str, Any]:
    """Two ``index --add`` of different datasets on one store, started together."""
    from pixelnn.zarr_store import open_library

    runner = fx.runner
    _reset(fx.lib_dir)
    shutil.copytree(fx.lib_a, fx.lib_dir)
    env = {"PIXELNN_LOCK_TIMEOUT": timeout} if timeout is not None else {}
    argv = lambda more: ["index", str(fx.data_a), "--model", str(fx.model), "--out", str(fx.lib_dir),  # noqa: E731
                         "--add", str(more), "--device", "cpu"]
    t0 = time.perf_counter()
    (p1, log1), (p2, log2) = runner.start(argv(fx.data_b), env), runner.start(argv(fx.data_c), env)
    p1.join(300)
    p2.join(300)
    logs = [log1.read_text(errors="replace"), log2.read_text(errors="replace")]
    ids = set(open_library(fx.lib_dir).ids)
    want = {f"a{i:03d}" for i in range(26)}
    for p, prefix in ((p1, "b"), (p2, "c")):
        if p.exitcode == 0:
            want |= {f"{prefix}{i:03d}" for i in range(10)}
    refused = [text.strip().splitlines() for p, text in zip((p1, p2), logs) if p.exitcode != 0]
    return {"exit_codes": [p1.exitcode, p2.exitcode], "waited": sum("waiting for another writer of" in t for t in logs),
            "refused": refused, "exemplars": len(ids), "lost": sorted(want - ids), "logs": logs,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-targeted", action="store_true", help="no kills at fixed points (for code without them)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pixelnn-crash-"))
    try:
        stats = kill_loop(root, args.kills, args.seed, targeted=not args.no_targeted)
        fx = stats.pop("fixtures")
        both = concurrent_adds(fx)
        refused = concurrent_adds(fx, timeout="0")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"kills landed: {stats['kills']} random + {stats['targeted_kills']} at fixed points "
          f"({stats['not_landed']} came after the command had finished and were retried); per command: "
          f"{stats['per_command']}")
    print(f"states found intact or recovered when opened: {stats['found_intact_or_recovered']}; refused with a "
          f"one-line recovery message: {stats['refused_with_message']}; re-runs equal to a clean run: "
          f"{stats['reruns_equal_to_clean']}")
    print(f"corruptions: {stats['corruptions']}")
    for p in stats["problems"]:
        print(f"  {p}")
    print(f"concurrent index --add (wait): exit codes {both['exit_codes']}, waited {both['waited']}, "
          f"{both['exemplars']} exemplars, lost {len(both['lost'])}; {both['seconds']} s")
    print(f"concurrent index --add (PIXELNN_LOCK_TIMEOUT=0): exit codes {refused['exit_codes']}, refused: "
          f"{refused['refused']}; {refused['exemplars']} exemplars")
    print(f"seconds: {stats['seconds']} (clean runs: {stats['clean_seconds']})")
    return 0 if stats["corruptions"] == 0 and not both["lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
