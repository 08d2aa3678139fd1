"""The web server's bounds (issue 15, part 4; docs/reliability.md, "Resources are bounded"): the pixel limit on the
sketch pad and region editor, capped request bodies, no URL fetched on a request's behalf, the warning beyond
loopback and ``--auth``, and a temporary folder that does not outlive its server.

The server tests run the app in this process on a free loopback port (a few seconds), except one that starts
``pixelnn serve`` and stops it with SIGTERM.
"""

from __future__ import annotations

import http.client
import http.server
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelnn.errors import PixelNNError
from pixelnn.web_limits import (MAX_JSON_BYTES, OWNER_FILE, TEMP_PREFIX, TempRoot, fetch_refusal, is_loopback,
                                parse_auth, remove_stale, upload_cap, url_in_payload, url_like)

from .test_web import _free_port, _wait_http, tiny  # noqa: F401 (tiny: the fixture, shared)

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

MAX_BYTES, MAX_PIXELS = 200_000, 1_000_000


@pytest.fixture(scope="module")
def app(tiny):  # noqa: F811
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.web import WebApp

    pipe = PixelNNPipeline.from_model_dir(tiny["model"], pca_dims=16)
    return WebApp(pipe, max_upload_bytes=MAX_BYTES, max_upload_pixels=MAX_PIXELS, work_dir=tiny["root"] / "work-lim")


def white_png(path: Path, w: int, h: int) -> Path:
    """A white RGBA PNG of w x h (small on disk: it compresses ~1000 to 1)."""
    Image.new("RGBA", (w, h), (255, 255, 255, 255)).save(path)
    return path


# ---------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("path, refused", [
    ("/gradio_api/file=http://127.0.0.1:9/x.png", True),
    ("/gradio_api/file=https://example.com/x.png", True),
    ("/gradio_api/file=HTTP://example.com/x.png", True),
    ("/gradio_api/file=http:/example.com/x.png", True),
    ("/gradio_api/file=//example.com/x.png", True),
    ("/gradio_api/file= ftp://example.com/x", True),
    ("/gradio_api/file/http://example.com/x.png", True),
    ("/gradio_api/proxy=https://abc.hf.space/x", True),
    ("/gradio_api/file=/tmp/gradio/abc/photo.png", False),
    ("/gradio_api/file=/tmp/x/file/http.png", False),
    ("/gradio_api/info", False),
    ("/", False),
])
def test_fetch_refusal(path, refused):
    assert (fetch_refusal(path) is not None) == refused


def test_url_payloads_are_found_at_any_depth():
    fd = {"path": "/tmp/gradio/x.png", "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/x.png",
          "meta": {"_type": "gradio.FileData"}}
    assert url_in_payload({"data": [fd, None, {"composite": fd, "layers": [fd]}], "fn_index": 3}) is None
    bad = {"path": "https://example.com/a.png", "meta": {"_type": "gradio.FileData"}}
    assert url_in_payload({"data": [None, {"background": None, "layers": [fd, bad]}]}) == bad["path"]
    assert url_in_payload({"data": [[fd, bad]]}) == bad["path"]
    assert url_in_payload({"data": ["https://example.com/a.png"]}) is None  # a text value, not a file
    assert url_like("  https://x") and url_like("//x") and not url_like("/tmp/x") and not url_like(3)


def test_parse_auth():
    assert parse_auth("ann:s3cr:et") == ("ann", "s3cr:et")
    for bad in ("ann", "", ":pw", "ann:", " ann:pw", "a\nb:pw", "ann:p\nw"):
        with pytest.raises(PixelNNError) as e:
            parse_auth(bad, "PIXELNN_AUTH")
        assert str(e.value).startswith("PIXELNN_AUTH") and "\n" not in str(e.value)
    with pytest.raises(PixelNNError) as e:
        parse_auth("topsecret")
    assert "topsecret" not in str(e.value)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST."]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "10.0.0.1", "example.com", "my-laptop"]))


def test_upload_cap():
    assert upload_cap(10 * 2**20, 8) == 81 * 2**20 and upload_cap(100, 0) == 100 + 2**20


# ---------------------------------------------------------------------------- the canvases
def test_sketch_canvas_over_the_pixel_limit_is_refused_before_it_is_decoded(app, tmp_path):
    from gradio.data_classes import FileData
    from gradio.components.image_editor import EditorData

    from pixelnn.web import CANVAS_SIDE, Oversized, bound_canvas

    pad = bound_canvas(gr.Sketchpad(type="numpy", image_mode="RGBA", canvas_size=(CANVAS_SIDE, CANVAS_SIDE)),
                       MAX_PIXELS)
    big = white_png(tmp_path / "big.png", 1200, 1000)  # 1.2 MP; the audit's was 36 MP against 25
    value = pad.preprocess(EditorData(composite=FileData(path=str(big)), layers=[FileData(path=str(big))]))
    assert isinstance(value["composite"], Oversized) and isinstance(value["layers"][0], Oversized)  # never decoded
    with pytest.raises(PixelNNError) as e:
        app.read_drawing(value)
    assert str(e.value) == "the sketch pad's image is 1200x1000 pixels (1.2 MP); the limit is 1.0 MP"
    # with the blob (bytes) path of the editor too
    assert isinstance(pad.convert_and_format_image(big.read_bytes()), Oversized)
    # a canvas within the limit is decoded as before
    ok = Image.new("RGBA", (CANVAS_SIDE, CANVAS_SIDE), (255, 255, 255, 255))
    ok.paste((0, 0, 0, 255), (100, 100, 200, 110))
    ok.save(tmp_path / "ok.png")
    value = pad.preprocess(EditorData(composite=FileData(path=str(tmp_path / "ok.png"))))
    assert value["composite"].shape == (CANVAS_SIDE, CANVAS_SIDE, 4)
    assert app.read_drawing(value).shape[:2] == (4, 4)


def test_region_layers_and_arrays_over_the_pixel_limit_are_refused(app, tmp_path):
    from gradio.data_classes import FileData
    from gradio.components.image_editor import EditorData

    from pixelnn.web import bound_canvas

    editor = bound_canvas(gr.ImageEditor(type="numpy", image_mode="RGBA"), MAX_PIXELS)
    big = white_png(tmp_path / "layer.png", 1001, 1000)
    value = editor.preprocess(EditorData(background=FileData(path=str(big)), layers=[FileData(path=str(big))]))
    with pytest.raises(PixelNNError, match=r"^a region layer is 1001x1000 pixels \(1.0 MP\); the limit is 1.0 MP$"):
        app.mask_from_drawing(value)
    # arrays (the library's own callers): refused from their shape, before any copy
    with pytest.raises(PixelNNError, match="the sketch pad's image is 1000x1001 pixels"):
        app.read_drawing({"composite": np.zeros((1001, 1000, 4), np.uint8)})
    with pytest.raises(PixelNNError, match="a region layer is 2000x600 pixels"):
        app.mask_from_drawing({"layers": [np.zeros((600, 2000), np.uint8)]})


# ---------------------------------------------------------------------------- the server, in this process
class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits.append(self.path)
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buf, "PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bait():
    """A local HTTP server that counts the requests it gets: the URL the tests ask the app to fetch."""
    _Counter.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Counter.hits
    httpd.shutdown()


SERVED: dict = {}  # the in-process server's gr.Blocks


@pytest.fixture(scope="module")
def server(app):
    from pixelnn.web import build_ui, launch

    demo = build_ui(app)
    port = _free_port()
    launch(demo, app, port=port, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/")
    SERVED["demo"] = demo
    yield url
    demo.close()


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
             chunked: bool = False) -> tuple[int, str]:
    """(status, body) of one HTTP request; ``chunked`` sends ``body`` in 64 KiB chunks without Content-Length. A
    server that answers before the body is all sent (a 413 from Content-Length) closes the connection: the rest
    of the body is dropped and the answer read."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = body or b""
    try:
        conn.putrequest(method, u.path + (f"?{u.query}" if u.query else ""))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif body or method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            for i in range(0, len(body), 65536):
                part = body[i:i + 65536]
                conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # refused before the end: the answer is there
            pass
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_request_bodies_are_capped(server, app):
    join = server + "/gradio_api/queue/join"
    big = json.dumps({"data": ["x" * (MAX_JSON_BYTES + 1000)], "fn_index": 0, "session_hash": "abc"}).encode()
    status, text = _request(join, "POST", big, {"Content-Type": "application/json"})
    assert status == 413 and "the limit is 2097152" in text, (status, text)
    status, text = _request(join, "POST", big, {"Content-Type": "application/json"}, chunked=True)
    assert status == 413 and "over the limit of 2097152 bytes" in text, (status, text)
    # an upload request: up to MAX_LIKE_PHOTOS files of the upload limit, plus the framing
    cap = upload_cap(MAX_BYTES, 8)
    boundary = "pixelnnboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    body = part + b"\0" * (cap + 1) + f"\r\n--{boundary}--\r\n".encode()
    ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, text = _request(server + "/gradio_api/upload", "POST", body, ctype)
    assert status == 413 and f"the limit is {cap}" in text, (status, text)
    status, text = _request(server + "/gradio_api/upload", "POST", body, ctype, chunked=True)
    assert status == 413, (status, text)
    # what the page sends still works: an upload under the limit, and the API
    small = part + Path(__file__).read_bytes()[:1000] + f"\r\n--{boundary}--\r\n".encode()
    status, text = _request(server + "/gradio_api/upload", "POST", small, ctype)
    assert status == 200 and text.startswith("["), (status, text)
    assert _request(server + "/gradio_api/info")[0] == 200


def test_no_url_is_fetched_on_a_requests_behalf(server, bait, monkeypatch, tiny, client_tmp):  # noqa: F811
    """Gradio would fetch these (its SSRF check refuses loopback addresses, so the test tells it that the bait
    server's is public: then only PixelNN's refusal stands between the request and the fetch)."""
    import safehttpx

    monkeypatch.setattr(safehttpx, "is_public_ip", lambda ip: True)
    base, hits = bait
    target = f"{base}/photo.png"
    for path in (f"/gradio_api/file={target}", f"/gradio_api/file/{target}", f"/gradio_api/proxy={target}",
                 f"/file={target}"):
        status, text = _request(server + path)
        assert status == 403 and text.startswith("this server"), (path, status, text)
    data = {"data": [{"path": target, "meta": {"_type": "gradio.FileData"}, "orig_name": "photo.png"}]}
    status, text = _request(server + "/gradio_api/call/check_photo", "POST", json.dumps(data).encode(),
                            {"Content-Type": "application/json"})
    assert status == 403 and "fetches no URL" in text, (status, text)
    join = {**data, "fn_index": 0, "trigger_id": None, "session_hash": "s1", "event_data": None}
    status, _ = _request(server + "/gradio_api/queue/join", "POST", json.dumps(join).encode(),
                         {"Content-Type": "text/plain"})  # whatever the content type says
    assert status == 403
    # the client's own uploads still work
    client = gradio_client.Client(server + "/", verbose=False)
    out = client.predict(gradio_client.handle_file(str(tiny["photo"])), api_name="/check_photo")
    assert out.endswith("is ready: press *Synthesize*."), out
    assert hits == [], hits


def test_sketch_over_the_limit_through_the_api_is_a_one_line_message(server, app, tmp_path, client_tmp):
    from pixelnn.web import PAGE_OPTIONS

    big = white_png(tmp_path / "big-sketch.png", 1000, 1001)
    assert big.stat().st_size < MAX_BYTES  # the upload passes: the pixels are what is refused
    client = gradio_client.Client(server + "/", verbose=False)
    page = {**app.options_from_page({}).to_dict(), "windows": "1,7,11,whole", "sets": "", "num_outputs": 0, "search": "default",
            **{k: "" for k in ("patch_size", "vote_size", "highpass_sigma", "chroma_weight")}}
    sketch = {"background": None, "layers": [], "composite": gradio_client.handle_file(str(big))}
    out = client.predict(None, None, sketch, [], *[page[k] for k in PAGE_OPTIONS], *[[] for _ in app.labels],
                         api_name="/synthesize_sketch")
    assert out[0] == "**Error:** the sketch pad's image is 1000x1001 pixels (1.0 MP); the limit is 1.0 MP", out[0]


def _multipart(fields: dict[str, str], file: bytes, boundary: str = "pixelnnb") -> tuple[bytes, dict]:
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"blob\"\r\n"
                 f"Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_image_editor_blob_uploads_are_bounded(server, monkeypatch):
    """Gradio's ``accept_blobs`` makes a list as long as the layer index a request names, and keeps every canvas
    it is sent until a submit names it: an index over MAX_EDITOR_LAYERS is a 400, and the canvases kept are
    capped (the oldest dropped)."""
    import pixelnn.web as web

    editor = next(b for b in SERVED["demo"].blocks.values() if getattr(b, "elem_id", None) == "region-editor")
    editor.blob_storage.clear()

    def send(index: str, blob_id: str, size: int = 1000) -> int:
        body, headers = _multipart({"component_id": str(editor._id), "session_hash": "s2", "fn_name": "accept_blobs",
                                    "type": "layer", "index": index, "id": blob_id}, b"\x89PNG" + bytes(size))
        return _request(server + "/gradio_api/component_server", "POST", body, headers)[0]

    assert send("1000000", "a") == 400 and send("-1", "a") == 400 and send("x", "a") == 400  # 10**6: 8 MB of list
    assert editor.blob_storage == {}
    assert send("0", "a") == 200 and len(editor.blob_storage["a"].layers) == 1
    monkeypatch.setattr(web, "MAX_EDITOR_BLOB_BYTES", 25_000)
    for blob_id in "bcd":
        assert send("1", blob_id, 10_000) == 200
    assert list(editor.blob_storage) == ["c", "d"]  # a and b dropped, oldest first
    editor.blob_storage.clear()


# ---------------------------------------------------------------------------- serve: warning, auth, temp folder
@pytest.fixture
def stubbed_serve(monkeypatch):
    """``pixelnn.web.serve`` with its launch and warm-up replaced: returns the launch calls' arguments."""
    import pixelnn.web as web

    calls = []
    monkeypatch.setattr(web, "launch", lambda demo, app, **kw: calls.append({**kw, "app": app}))
    monkeypatch.setattr(web, "warm_up", lambda app: None)
    return calls


@pytest.mark.parametrize("host, auth, warned", [("0.0.0.0", None, True), ("192.168.7.7", None, True),
                                                ("0.0.0.0", ("ann", "pw"), False), ("127.0.0.1", None, False),
                                                ("localhost", None, False)])
def test_serve_warns_beyond_loopback_without_auth(tiny, stubbed_serve, caplog, host, auth, warned):  # noqa: F811
    from pixelnn.web import serve

    with caplog.at_level(logging.INFO, logger="pixelnn.web"):
        serve(tiny["model"], host=host, port=7861, auth=auth)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warnings) == warned, warnings
    if warned:
        assert len(warnings) == 1 and "\n" not in warnings[0]
        assert warnings[0].startswith(f"http://{host}:7861 is reachable from the network without authentication")
        assert "--auth USER:PASSWORD" in warnings[0] and "PIXELNN_AUTH" in warnings[0]
    (call,) = stubbed_serve
    assert call["auth"] == auth and call["host"] == host
    assert call["app"].temp_root.removed and not call["app"].temp_root.path.exists()  # gone once serve returns


@pytest.mark.parametrize("argv, env, message", [
    (["--auth", "nocolon"], None, "--auth must be USER:PASSWORD (the value given has no ':')"),
    (["--auth", ":pw"], None, "--auth must be USER:PASSWORD with a non-empty user and password"),
    ([], "ann:", "PIXELNN_AUTH must be USER:PASSWORD with a non-empty user and password"),
])
def test_malformed_auth_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, env, message):
    from pixelnn.cli import main

    if env is None:
        monkeypatch.delenv("PIXELNN_AUTH", raising=False)
    else:
        monkeypatch.setenv("PIXELNN_AUTH", env)
    rc = main(["serve", "--model", str(tmp_path / "no-such-model"), "--port", str(_free_port()), *argv])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and lines == [f"pixelnn serve: error: {message}"], lines


def test_auth_flag_wins_over_the_environment(monkeypatch):
    from pixelnn.cli import serve_auth

    monkeypatch.setenv("PIXELNN_AUTH", "env:pw")
    assert serve_auth(None) == ("env", "pw") and serve_auth("flag:pw2") == ("flag", "pw2")
    monkeypatch.setenv("PIXELNN_AUTH", "")
    assert serve_auth(None) is None


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_of_dead_servers_are_removed(tmp_path):
    dead = tmp_path / f"{TEMP_PREFIX}{_dead_pid()}-abcd"
    (dead / "gradio" / "x").mkdir(parents=True)
    (dead / "gradio" / "x" / "photo.png").write_bytes(b"x")
    (dead / OWNER_FILE).write_text("1 0\n")
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-efgh"  # this process's: alive
    live.mkdir()
    other = tmp_path / f"{TEMP_PREFIX}web-cache"  # no pid in the name: not ours to judge
    other.mkdir()
    root = TempRoot(tmp_path)  # making one removes the dead server's
    assert not dead.exists() and live.exists() and other.exists() and root.path.exists()
    assert root.path.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and (root.path / OWNER_FILE).exists()
    assert remove_stale(tmp_path) == []
    root.cleanup()
    assert not root.path.exists() and root.removed


def test_serve_with_auth_stops_on_sigterm_and_leaves_no_temp_folder(tiny, app, tmp_path, client_tmp):  # noqa: F811
    """``pixelnn serve`` (PIXELNN_AUTH set) in a child process whose temp folder is ``tmp``: it removes a dead
    server's folder at start, refuses unauthenticated API calls, serves a logged-in client one synthesis, and
    on SIGTERM exits 0 leaving nothing in ``tmp``."""
    from pixelnn.web import PAGE_OPTIONS

    tmp = tmp_path / "tmp"
    stale = tmp / f"{TEMP_PREFIX}{_dead_pid()}-stale"
    (stale / "work").mkdir(parents=True)
    (stale / OWNER_FILE).write_text("0 0\n")
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp), PIXELNN_AUTH="ann:s3cret", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "pixelnn.cli", "serve", "--model", str(tiny["model"]), "--port",
                             str(port), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc)
        assert not stale.exists()
        ours = [d for d in tmp.iterdir() if d.name.startswith(f"{TEMP_PREFIX}{proc.pid}-")]
        assert len(ours) == 1, list(tmp.iterdir())
        status, _ = _request(url + "/gradio_api/call/check_photo", "POST", b'{"data": [null]}',
                             {"Content-Type": "application/json"})
        assert status == 401, status
        with pytest.raises(Exception):
            gradio_client.Client(url + "/", verbose=False)  # no login: no API
        client = gradio_client.Client(url + "/", auth=("ann", "s3cret"), verbose=False)
        photo = gradio_client.handle_file(str(tiny["photo"]))
        page = {"mode": "matched", "color": "rgb", "top_k": 11, "windows": "1,7,11,whole", "sets": "",
                "patch_size": "", "vote_size": "", "highpass_sigma": "", "chroma_weight": "", "descriptor": "hypercolumn",
                "pca_dims": None, "num_outputs": 2, "seed": 0, "region_blend": 4, "order": "score",
                "search": "default"}
        out = client.predict(photo, None, None, [], *[page[k] for k in PAGE_OPTIONS], *[[] for _ in app.labels],
                             api_name="/synthesize_photo")
        assert out[0].startswith("2 outputs from the photo"), out[0]
        assert sum(1 for f in ours[0].rglob("*") if f.is_file()) > 5  # the uploads, outputs, Gradio's cache
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read()
    assert rc == 0, log
    assert "Traceback" not in log, log
    assert list(tmp.iterdir()) == [], list(tmp.rglob("*"))[:20]
