"""Fuzzing at any size: the campaign of tests/test_fuzz.py (tests/fuzzing.py) with another seed and more inputs.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/fuzz.py --seed 1 --scale 5

prints, per area (decode, prepare, synthesize, web, cli-options): the cases run, the malformed inputs they fed,
the successes, the clean one-line errors and the tracebacks (must be 0), and each traceback's case and evidence;
exits 1 when there was one. ``--scale 1`` is the test suite's size (over 2,000 inputs, about a minute on 2 cores).
Everything is made in a temporary folder (``--work``), removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fuzzing, tests.conftest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1, help="generator seed (the test suite uses 0)")
    p.add_argument("--scale", type=float, default=5.0, help="inputs per area, times the test suite's (default 5)")
    p.add_argument("--areas", default=None, help="comma list of areas (default all)")
    p.add_argument("--work", default=None, help="folder for the generated files (default a temporary one)")
    args = p.parse_args()
    from tests.fuzzing import campaign

    logging.basicConfig(level=logging.ERROR)  # the cases' own warnings are counted, not shown
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="pixelnn-fuzz-", dir=args.work))
    t0 = time.perf_counter()
    try:
        tally = campaign(work, seed=args.seed, scale=args.scale,
                         areas=tuple(args.areas.split(",")) if args.areas else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fuzz campaign: seed {args.seed}, scale {args.scale}, {time.perf_counter() - t0:.0f} s")
    print("\n".join(tally.lines()))
    print(f"inputs tried {tally.total_inputs}, cases {tally.total}, successes {sum(tally.successes.values())}, "
          f"clean errors {sum(tally.clean_errors.values())}, tracebacks {len(tally.tracebacks)}")
    return 1 if tally.tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
