"""Peak memory of ``pixelnn prepare`` on a zip bomb: the audit's 1 MB zip of four 250 MB entries.

    PYTHONPATH=src python benchmarks/prepare_limits.py [--entries 4] [--mib 250]

Makes the zip in a temporary folder (streamed through ``zipfile``: the benchmark itself never holds an
entry), runs ``pixelnn prepare ZIP --out OUT --task superres --size 16 --factor 4`` as a child process and
prints the zip's size, the child's exit status and stderr, its wall time and its peak resident memory
(``ru_maxrss`` of that child's ``os.wait4`` rusage, what ``resource.getrusage(RUSAGE_CHILDREN)`` gives a
process whose only child it is).
For comparison it also runs the same command on a zip of two small photos (``--baseline``), the cost of the
interpreter and of prepare's imports. Point ``PYTHONPATH`` at another checkout's ``src`` to measure it
(the figures in docs/reliability.md, "Resources are bounded", compare main before and after the bounds).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def zip_bomb(path: Path, entries: int = 4, mib: int = 250, level: int = 9) -> None:
    """``entries`` members ``bomb-N.png`` of ``mib`` MiB of zeros each, written 1 MiB at a time."""
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for i in range(entries):
            info = zipfile.ZipInfo(f"bomb-{i}.png", (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            for attr in ("_compresslevel", "compress_level"):  # what z.open(info) uses (the name differs by Python)
                if attr in type(info).__slots__:
                    setattr(info, attr, level)
            with z.open(info, "w", force_zip64=mib >= 2048) as f:
                for _ in range(mib):
                    f.write(zeros)


def small_zip(path: Path) -> None:
    """Two 64 x 64 photos: what prepare costs without a bomb."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for i in range(2):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
            z.writestr(f"ok{i}.png", buf.getvalue())


def run_prepare(zip_path: Path, out: Path) -> dict:
    """``pixelnn prepare`` on ``zip_path`` in a child process: exit status, stderr, wall time and the child's
    peak RSS (``os.wait4``: the rusage of that child alone, as ``getrusage(RUSAGE_CHILDREN)`` would give for a
    process whose only child it is)."""
    cmd = [sys.executable, "-m", "pixelnn.cli", "-q", "prepare", str(zip_path), "--out", str(out), "--task",
           "superres", "--size", "16", "--factor", "4"]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().strip()
    return {"rc": proc.returncode, "stderr": stderr, "seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=4, help="members of the zip bomb (default 4)")
    p.add_argument("--mib", type=int, default=250, help="MiB of zeros in each member (default 250)")
    p.add_argument("--baseline", action="store_true", help="first run prepare on a zip of two small photos")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixelnn-prepare-limits-") as tmp:
        tmp = Path(tmp)
        if args.baseline:
            small_zip(tmp / "small.zip")
            r = run_prepare(tmp / "small.zip", tmp / "small-out")
            print(f"baseline (2 small photos): exit {r['rc']}, {r['seconds']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB")
        t0 = time.perf_counter()
        bomb = tmp / "bomb.zip"
        zip_bomb(bomb, args.entries, args.mib)
        print(f"zip bomb: {args.entries} x {args.mib} MiB of zeros in {bomb.stat().st_size / 1e6:.2f} MB "
              f"(made in {time.perf_counter() - t0:.1f} s)")
        r = run_prepare(bomb, tmp / "bomb-out")
        print(f"pixelnn prepare on it: exit {r['rc']}, {r['seconds']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB")
        print(f"stderr: {r['stderr']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
