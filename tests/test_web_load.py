"""The web app under load: several synthesis workers, batches of waiting requests, a bounded queue.

The batcher is tested with a fake ``run`` whose calls can be held open, so every grouping is deterministic; the
app is tested on the tiny model: concurrent requests give what single requests give, bit for bit.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pixelnn.errors import PixelNNError
from pixelnn.library import ExemplarLibrary
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.web import Batcher, WebApp

from .conftest import make_dataset, make_tiny_model_dir

pytest.importorskip("faiss")


class FakeRun:
    """``run(payloads)`` that records its calls and their overlap; payload "bad" raises; ``hold`` blocks calls."""

    def __init__(self):
        self.calls: list[list] = []
        self.active = self.peak = 0
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def __call__(self, payloads):
        with self.lock:
            self.calls.append(list(payloads))
            self.active += 1
            self.peak = max(self.peak, self.active)
        self.started.set()
        try:
            self.hold.wait(10)
            time.sleep(0.01)
            if "bad" in payloads:
                raise ValueError("bad payload")
            return [f"done {p}" for p in payloads]
        finally:
            with self.lock:
                self.active -= 1


def _submit_all(batcher, items, workers=16):
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(batcher.submit, key, payload) for key, payload in items]
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=30))
            except Exception as e:  # noqa: BLE001 (the test looks at it)
                out.append(e)
        return out


def test_batcher_groups_waiting_requests_of_one_key():
    run = FakeRun()
    b = Batcher(run, workers=1, batch=3)
    run.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b.submit, "a", 0)
        assert run.started.wait(5)  # the only worker is busy with request 0
        rest = []
        for i, key in enumerate("aabaa", start=1):
            rest.append(pool.submit(b.submit, key, i))
            time.sleep(0.05)  # they queue in this order
        time.sleep(0.2)  # all five are waiting now
        run.hold.set()
        results = [first.result(10)] + [f.result(10) for f in rest]
    assert results == [f"done {i}" for i in range(6)]
    # 0 alone (it ran before the others came); then the oldest waiting (1) with the next two of its key;
    # then b (the oldest left), then the last a
    assert run.calls == [[0], [1, 2, 4], [3], [5]]
    assert run.peak == 1


def test_batcher_runs_at_most_workers_at_once_and_never_groups_key_none():
    run = FakeRun()
    b = Batcher(run, workers=2, batch=4)
    results = _submit_all(b, [(None, i) for i in range(12)])
    assert results == [f"done {i}" for i in range(12)]
    assert run.peak == 2
    assert all(len(c) == 1 for c in run.calls) and len(run.calls) == 12


def test_batcher_one_bad_request_does_not_fail_its_batch():
    run = FakeRun()
    b = Batcher(run, workers=1, batch=4)
    run.hold.clear()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b.submit, "k", "x")
        assert run.started.wait(5)
        rest = []
        for p in ("y", "bad", "z"):
            rest.append(pool.submit(b.submit, "k", p))
            time.sleep(0.05)
        time.sleep(0.2)
        run.hold.set()
        assert first.result(10) == "done x"
        assert rest[0].result(10) == "done y" and rest[2].result(10) == "done z"
        with pytest.raises(ValueError, match="bad payload"):
            rest[1].result(10)
    assert ["y", "bad", "z"] in run.calls  # tried together first, then each alone
    assert ["y"] in run.calls and ["bad"] in run.calls and ["z"] in run.calls


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("load")
    model = make_tiny_model_dir(root / "model")
    ExemplarLibrary.build(None, model, [make_dataset(root / "data", n=30, seed=0)], progress=False)
    return PixelNNPipeline.from_model_dir(model, pca_dims=16)


def _inputs(pipe, n):
    cfg = pipe.regressor.config
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (cfg.input_size, cfg.input_size, cfg.in_channels), dtype=np.uint8) for _ in range(n)]


def _same(a, b):
    assert np.array_equal(a.stage1, b.stage1)
    assert np.array_equal(a.outputs, b.outputs)
    for k in ("exemplar", "source_y", "source_x", "similarity"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k


@pytest.mark.parametrize("workers, batch", [(2, 1), (1, 3), (2, 2)])
def test_concurrent_requests_give_what_single_requests_give(pipe, tmp_path, workers, batch):
    app = WebApp(pipe, work_dir=tmp_path / "work", workers=workers, batch=batch)
    xs = _inputs(pipe, 4)
    opts = [app.default_options().replace(seed=i % 2, num_outputs=6) for i in range(4)]
    single = [pipe(x, o) for x, o in zip(xs, opts)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: app.synthesize(*a), zip(xs, opts)))
    for a, b in zip(got, single):
        _same(a, b)
    assert app.runs == 4 and app.peak_active <= workers
    if batch == 1:
        assert app.batches == 4


def test_app_checks_its_load_settings(pipe, tmp_path):
    for bad in ({"workers": 0}, {"batch": 65}, {"max_queue": 0}, {"workers": 1.5}, {"batch": True}):
        with pytest.raises(PixelNNError, match=next(iter(bad))):
            WebApp(pipe, work_dir=tmp_path / "w", **bad)


def test_queue_is_bounded(pipe, tmp_path):
    pytest.importorskip("gradio")
    from pixelnn.web import build_ui

    app = WebApp(pipe, work_dir=tmp_path / "work", workers=2, batch=3, max_queue=5)
    demo = build_ui(app)
    assert demo._queue.max_size == 5
    limits = {fn.concurrency_id: fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "pipeline"}
    assert limits == {"pipeline": 6}  # each worker's batch is let in; the rest wait in Gradio's queue


def test_browser_waiting_user_sees_their_queue_position(pipe, tmp_path, client_tmp):
    """One worker, held busy by another client: the page of the next user shows "queue: 1/1", then the outputs."""
    gradio_client = pytest.importorskip("gradio_client")
    from PIL import Image

    from pixelnn.web import PAGE_OPTIONS, build_ui, launch

    from .conftest import synthetic_photos
    from .test_web import _free_port, _upload, _wait_http, _wait_status, open_browser

    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic_photos(1, 64, seed=7)[0]).save(photo)
    app = WebApp(pipe, work_dir=tmp_path / "work", workers=1)
    hold, held = threading.Event(), threading.Event()
    run = app._batcher.run

    def slow_run(payloads):  # the first request keeps the only worker until the browser has shown its place
        if not held.is_set():
            held.set()
            hold.wait(120)
        return run(payloads)

    app._batcher.run = slow_run
    demo = build_ui(app)
    port = _free_port()
    launch(demo, app, port=port, block=False, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url)
        client = gradio_client.Client(url, verbose=False)
        page_values = {**app.options_from_page({}).to_dict(), "windows": "1,whole", "sets": "1,2", "num_outputs": 0,
                       "search": "default",
                       **{k: "" for k in ("patch_size", "vote_size", "highpass_sigma", "chroma_weight")}}
        job = client.submit(gradio_client.handle_file(str(photo)), None, None, [],
                            *[page_values[k] for k in PAGE_OPTIONS], *[[] for _ in app.labels],
                            api_name="/synthesize_photo")
        assert held.wait(60)
        with open_browser(url) as page:
            _upload(page, "photo-file", photo)
            _wait_status(page, "is ready")
            page.click("#run-photo")
            page.wait_for_function("document.body.innerText.includes('queue: 1/1')", timeout=60_000)
            hold.set()
            assert "outputs from the photo" in _wait_status(page, "outputs from the photo")
        assert job.result(timeout=120)[0].startswith("4 outputs from the photo")
    finally:
        hold.set()
        demo.close()
