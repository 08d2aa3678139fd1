"""Time the web app as a user sees it, check that simultaneous users are queued, and take the README screenshot.

Starts ``pixelnn serve --model MODEL`` on a free loopback port, then drives Debian's chromium with
Playwright (no browser download):

1. ``--repeats`` times: upload a photo, press *Synthesize*, and time until all 72 gallery images
   have loaded (request -> gallery), next to the pipeline's own time from the status line.
2. Two users at once: two browser pages press *Synthesize* together; the second one's gallery
   arrives after the first's (one synthesis at a time) and neither fails.
3. With ``--screenshot``: clicks an output and a pixel and saves a screenshot of the page.

It drives the app only through ``pixelnn serve`` and the browser (the app itself runs
``pipe(x, SynthesisOptions)`` from its Options panel), so it never touches the pipeline's internals.

Usage::

    python benchmarks/web_app.py --model /work/runs/model-shoes-edges --photo shoe.png \\
        --screenshot docs/images/web-app.png
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GALLERY_LOADED = ("n => { const im = [...document.querySelectorAll('#gallery img')];"
                  " return im.length >= n && im.every(i => i.complete && i.naturalWidth > 0); }")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its finished children (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url} did not answer in {timeout} s")


def synthesize(page, photo: str, n: int) -> tuple[float, str]:
    """Upload ``photo`` (clearing the previous one), press Synthesize; seconds until the gallery loaded, status."""
    box = page.locator("#photo-file")
    if box.locator("input[type=file]").count() == 0:
        box.get_by_role("button", name="Clear").click()
    box.locator("input[type=file]").set_input_files(photo)
    page.wait_for_function("document.querySelector('#status').innerText.includes('is ready')")
    t0 = time.perf_counter()
    page.click("#run-photo")
    # the status and the gallery change in the same update, so once the status says so the gallery is new
    page.wait_for_function("document.querySelector('#status').innerText.includes('outputs from')")
    page.wait_for_function(GALLERY_LOADED, arg=n)
    return time.perf_counter() - t0, page.locator("#status").inner_text()


def shrink_png(path: str, limit: int = 500_000) -> None:
    """Quantise a screenshot to a 256-colour palette if it is over ``limit`` bytes."""
    from PIL import Image

    if os.path.getsize(path) > limit:
        im = Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--photo", required=True, nargs="+", help="photos to upload (cycled)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--output", type=int, default=66, help="1-based output to open for the screenshot")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "pixelnn.cli", "-q", "serve", "--model", args.model, "--port", str(port)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    try:
        wait_http(url, proc)
        print(f"server up in {time.perf_counter() - t0:.1f} s (model loaded, warm-up run done)")
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=ARGS,
                                                       headless=True, viewport={"width": 1400, "height": 1250})
            ctx.set_default_timeout(300_000)
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_selector("#run-photo")
            for i in range(args.repeats):
                cpu0 = cpu_seconds(proc.pid)
                sec, status = synthesize(page, args.photo[i % len(args.photo)], 72)
                cpu = cpu_seconds(proc.pid) - cpu0
                pipe = re.search(r"pipeline ([0-9.]+) s", status)
                handler = re.search(r" in ([0-9.]+) s", status)
                print(f"request -> 72 images in the gallery: {sec:.2f} s (request handler {handler.group(1) if handler else '?'}"
                      f" s, of which pipeline {pipe.group(1) if pipe else '?'} s)"
                      f"; server CPU {cpu:.2f} s (upload check included) | load {os.getloadavg()[0]:.2f}")
            # Two users at once: two pages, same server.
            other = ctx.new_page()
            other.goto(url)
            other.wait_for_selector("#run-photo")
            for pg, ph in ((page, args.photo[0]), (other, args.photo[-1])):
                box = pg.locator("#photo-file")
                if box.locator("input[type=file]").count() == 0:
                    box.get_by_role("button", name="Clear").click()
                box.locator("input[type=file]").set_input_files(ph)
                pg.wait_for_function("document.querySelector('#status').innerText.includes('is ready')")
            done = {}
            t0 = time.perf_counter()
            page.click("#run-photo")
            other.click("#run-photo")
            pending = {"user 1": page, "user 2": other}
            while pending:  # poll both pages, so each one's time is its own
                for name, pg in list(pending.items()):
                    if pg.evaluate("document.querySelector('#status').innerText.includes('outputs from')") \
                            and pg.evaluate(GALLERY_LOADED, 72):
                        done[name] = time.perf_counter() - t0
                        del pending[name]
                time.sleep(0.05)
            print("two users pressing Synthesize together: " +
                  ", ".join(f"{k} had 72 images after {v:.2f} s" for k, v in sorted(done.items(), key=lambda kv: kv[1])))
            other.close()
            if args.screenshot:
                k = args.output - 1
                page.locator("#gallery img").nth(k).click()
                page.wait_for_function("document.querySelector('#contrib-table').innerText.includes('share of pixels')")
                corr = page.locator("#corr-view img")
                corr.wait_for()
                b = corr.bounding_box()
                corr.click(position={"x": b["width"] * 0.45, "y": b["height"] * 0.62})
                page.wait_for_function("document.querySelector('#pixel-info').innerText.includes('came from')")
                page.wait_for_function("document.querySelectorAll('#contributors img').length >= 1")
                time.sleep(1.0)
                page.mouse.move(1, 1)  # no hover tooltip in the picture
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=args.screenshot, full_page=True)
                shrink_png(args.screenshot)
                print(f"screenshot: {args.screenshot}")
            ctx.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
