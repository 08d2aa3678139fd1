"""Many users at once against ``pixelnn serve``: failures, latency percentiles and the server's peak memory.

Starts ``pixelnn serve --model MODEL --workers W --batch B`` on a free loopback port for every configuration
asked, then ``--users`` gradio_client clients submit one synthesis each at the same moment (a photo, the
``--photo`` files in turn, so that users ask for different things; all 72 outputs; each user its own seed) and wait for their results. Prints per configuration:
failures (errors or a wrong number of outputs), the latency from submit to result at p50 / p95 / max (the last
user's), the throughput, and the server's peak RSS (VmHWM of the server process, model and library included).

    PYTHONPATH=src python benchmarks/web_load.py --model pixelnn-demo/model --photo photos/*.png --users 20 \\
        --config 1x1 --config 2x1 --config 2x4

A configuration is ``WORKERSxBATCH``. ``--same-options`` gives every user the same seed, so that batches can
form (``--batch`` groups only requests of identical options). The machine's other load changes the figures: run
it on a quiet machine and compare configurations of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from web_app import free_port, wait_http  # benchmarks/web_app.py: the same server start


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MB (0 where /proc is not readable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def run_config(args: argparse.Namespace, workers: int, batch: int) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    cmd = [sys.executable, "-m", "pixelnn.cli", "serve", "--model", args.model, "--port", str(port),
           "--workers", str(workers), "--batch", str(batch), "--max-queue", str(max(64, args.users))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, proc)
        probe = Client(url, verbose=False)
        info = probe.view_api(return_format="dict", print_info=False)
        params = info["named_endpoints"]["/synthesize_photo"]["parameters"]

        def values(seed: int, photo: str) -> list:
            v = []
            for j, p in enumerate(params):  # the photo first, then the page's defaults, the seed set
                name, default = p["parameter_name"], p.get("parameter_default")
                if j == 0:
                    v.append(handle_file(photo))
                elif name == "seed":
                    v.append(seed)
                else:
                    v.append(default)
            return v

        clients = [Client(url, verbose=False) for _ in range(args.users)]
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(args.users)

        def user(i: int) -> None:
            start.wait()
            t0 = time.perf_counter()
            try:
                out = clients[i].predict(*values(0 if args.same_options else i, args.photo[i % len(args.photo)]),
                                         api_name="/synthesize_photo")
                ok = isinstance(out, (list, tuple)) and str(out[0]).startswith(f"{args.outputs} outputs")
                with lock:
                    (latencies if ok else failures).append(time.perf_counter() - t0 if ok else str(out[0])[:120])
            except Exception as e:  # noqa: BLE001 (counted and shown)
                with lock:
                    failures.append(f"{type(e).__name__}: {e}"[:160])

        t_all = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_all
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"config": f"{workers}x{batch}", "failures": failures, "latencies": latencies, "wall": wall, "rss": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--photo", required=True, nargs="+", help="photos to upload, one per user in turn")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--outputs", type=int, default=72, help="outputs each result must have (the default sets)")
    ap.add_argument("--config", action="append", default=None, help="WORKERSxBATCH, repeatable (default 1x1 2x1)")
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads (default: its own choice)")
    ap.add_argument("--same-options", action="store_true", help="every user the same seed (batches can form)")
    args = ap.parse_args()
    # gradio_client stages every download in a new folder of the temp dir and leaves it there: use our own
    downloads = tempfile.TemporaryDirectory(prefix="pixelnn-web-load-")
    tempfile.tempdir = downloads.name
    rows = []
    for c in args.config or ["1x1", "2x1"]:
        w, b = (int(v) for v in c.lower().split("x"))
        r = run_config(args, w, b)
        rows.append(r)
        lat = r["latencies"] or [float("nan")]
        print(f"{r['config']:>6}: {args.users} users, failures {len(r['failures'])}, "
              f"p50 {pct(lat, 50):.1f} s, p95 {pct(lat, 95):.1f} s, last {max(lat):.1f} s, "
              f"mean {statistics.fmean(lat):.1f} s, {args.users / r['wall'] * 60:.1f} syntheses/min, "
              f"peak RSS {r['rss']:.0f} MB", flush=True)
        for f in r["failures"][:5]:
            print(f"        failure: {f}")
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
