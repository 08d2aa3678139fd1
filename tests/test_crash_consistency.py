"""Writers killed with SIGKILL at random points, and two writers at once, lose nothing (issue 15, parts 2 and 6).

The harness is ``benchmarks/crash_consistency.py`` (its docstring says what is killed and checked); this
runs it with 20 random kills (5 each of ``prepare --overwrite``, ``index``, ``index --add`` and ``train``)
plus 4 at fixed points, and the two concurrency checks. About a minute on 2 cores.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("zarr")

pytestmark = pytest.mark.slow


def _harness():
    # importable by name: the fork server's children unpickle their target from it
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module("crash_consistency")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    h = _harness()
    stats = h.kill_loop(tmp_path_factory.mktemp("crash"), kills=20, seed=0, log=lambda line: None)
    return h, stats


def test_twenty_random_kills_corrupt_nothing(killed):
    h, stats = killed
    print(f"\nkills landed {stats['kills']} (+{stats['targeted_kills']} at fixed points), "
          f"found intact or recovered {stats['found_intact_or_recovered']}, refused with a message "
          f"{stats['refused_with_message']}, re-runs equal to clean {stats['reruns_equal_to_clean']}, "
          f"corruptions {stats['corruptions']}, {stats['seconds']} s")
    assert not stats["problems"], stats["problems"]
    assert stats["corruptions"] == 0
    assert stats["kills"] == 20 and stats["targeted_kills"] == 4
    assert stats["reruns_equal_to_clean"] == 24
    assert set(stats["per_command"]) >= {"prepare --overwrite", "index (new store)", "index --add", "train"}


def test_two_concurrent_adds_both_land_the_second_waits(killed):
    h, stats = killed
    r = h.concurrent_adds(stats["fixtures"])
    assert r["exit_codes"] == [0, 0], r["logs"]
    assert r["waited"] == 1, r["logs"]  # the second one said it waits for the first (pid N)
    assert r["exemplars"] == 46 and not r["lost"]


def test_a_second_writer_is_refused_with_one_line_when_it_may_not_wait(killed):
    h, stats = killed
    r = h.concurrent_adds(stats["fixtures"], timeout="0")
    assert sorted(r["exit_codes"]) == [0, 2], r["logs"]
    (lines,) = r["refused"]
    assert len(lines) == 1 and "another writer of" in lines[0] and "(pid " in lines[0] and "retry" in lines[0]
    assert r["exemplars"] == 36 and not r["lost"]  # the first one's data is all there
