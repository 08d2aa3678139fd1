"""The web server's bounds (issue 15, part 4; docs/reliability.md, "Resources are bounded").

- :class:`RequestLimits`, an ASGI middleware in front of the Gradio app: request bodies are capped
  (uploads at :func:`upload_cap`, everything else at :data:`MAX_JSON_BYTES`, by ``Content-Length`` and
  by the bytes that actually arrive, for chunked bodies too) with a 413, and the server fetches no URL on
  a request's behalf: Gradio's ``/gradio_api/file=<URL>`` and ``/gradio_api/proxy=`` routes and file
  payloads whose ``path`` is a URL are refused with a 403 before Gradio sees them.
- :class:`TempRoot`, a server's own temporary folder (``$TMPDIR/pixelnn-web-PID-*``: the app's download
  folders and Gradio's cache), removed when the server stops; making one removes those of servers that died.
- :func:`parse_auth` and :func:`is_loopback` for ``pixelnn serve --auth`` and its warning beyond loopback.

Nothing here imports Gradio: the middleware is plain ASGI.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Awaitable, Callable

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

#: Largest request body that is not an upload (the page's events as JSON, the login form), in bytes. The page's
#: largest, a synthesis request with every label menu full, is a few hundred KB.
MAX_JSON_BYTES = 2 * 2**20
#: Room for the multipart framing (part headers, boundaries) of an upload request, over its files' bytes.
MULTIPART_OVERHEAD = 2**20
#: Prefix of a server's temporary folder in the system's temp folder: ``pixelnn-web-PID-XXXXXXXX``.
TEMP_PREFIX = "pixelnn-web-"
#: The file in a temporary folder that records its owner (``pid start-time``); its age is the folder's.
OWNER_FILE = "owner"

_TEMP_NAME = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<pid>\d+)-")
#: What a URL looks like where a file path is expected: ``scheme://``, ``//host``, ``http:`` with any slashes.
_URL_LIKE = re.compile(r"^\s*(?:[a-z][a-z0-9+.\-]*://|//|\\\\|https?:)", re.IGNORECASE)
#: Gradio's routes that take a file path or a URL in the request path (``/gradio_api/file=...``, the older
#: ``/gradio_api/file/...``) or always fetch one (``/gradio_api/proxy=...``).
_FILE_ROUTE = re.compile(r"/(?P<route>file=|file/|proxy=)(?P<target>.*)$", re.DOTALL)


def upload_cap(max_upload_bytes: int, files: int) -> int:
    """Largest upload request body: ``files`` files (the most one upload field takes) of ``max_upload_bytes``
    each, plus :data:`MULTIPART_OVERHEAD`."""
    return int(max_upload_bytes) * max(1, int(files)) + MULTIPART_OVERHEAD


def url_like(value: Any) -> bool:
    """Whether ``value`` is a string that names a URL rather than a file (``http://...``, ``HTTPS:/x``,
    ``//host/x``, ``ftp://...``, ``file://...``); Gradio fetches the ``http(s)://`` ones server-side."""
    return isinstance(value, str) and bool(_URL_LIKE.match(value))


def fetch_refusal(path: str) -> str | None:
    """Why a request path would make the server fetch a URL (a one-line reason), or None when it does not.

    ``/gradio_api/proxy=...`` always fetches; ``/gradio_api/file=<URL>`` (and ``/gradio_api/file/<URL>``)
    fetches the URL and streams it back (through ``safehttpx``, whose check asks dns.google about names that
    resolve only to private addresses: a fetch too). Paths of files (``file=/tmp/...``) are Gradio's to check.
    """
    m = _FILE_ROUTE.search(path)
    if m is None:
        return None
    if m["route"] == "proxy=":
        return "this server proxies nothing"
    if url_like(m["target"]):
        return "this server fetches no URL on a request's behalf"
    return None


def url_in_payload(data: Any) -> str | None:
    """The first file payload in parsed JSON ``data`` whose ``path`` is a URL (Gradio would download it), or None.

    A file payload is any object with a ``path`` key (Gradio's ``FileData``, at any depth: a sketch pad's layers,
    a list of "like these" photos). Every object and list is looked at: a body of :data:`MAX_JSON_BYTES` holds
    at most a million values (0.1-0.2 s)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if url_like(item.get("path")):
                return str(item["path"])[:200]
            stack.extend([v for v in item.values() if type(v) in _CONTAINERS])
        elif isinstance(item, list):
            stack.extend([v for v in item if type(v) in _CONTAINERS])
    return None


_CONTAINERS = (dict, list)  # what parsed JSON nests (json.loads makes exactly these types)

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when a body passes its cap (the app's own answer is then replaced by a 413)."""


class RequestLimits:
    """ASGI middleware: caps request bodies and refuses every request that would make the server fetch a URL.

    Parameters
    ----------
    app : ASGI app
        The Gradio (FastAPI) app.
    upload_bytes : int
        Cap of multipart bodies (uploads, the image editors' blobs): :func:`upload_cap`.
    json_bytes : int
        Cap of every other body (:data:`MAX_JSON_BYTES`).

    A body over its cap gets ``413``: at once from ``Content-Length``, else when the bytes that arrived (chunked
    transfer, a lying length) pass it, before the app has answered. A body that is not multipart is read whole
    (it is at most ``json_bytes``) and, when it is JSON, refused with ``403`` if a file payload's ``path`` is a
    URL (:func:`url_in_payload`); so is a request path of Gradio's URL-fetching routes (:func:`fetch_refusal`).
    Refusals are one-line ``text/plain`` answers. WebSocket and lifespan traffic passes untouched.
    """

    def __init__(self, app: Any, upload_bytes: int, json_bytes: int = MAX_JSON_BYTES):
        self.app = app
        self.upload_bytes = int(upload_bytes)
        self.json_bytes = int(json_bytes)
        self.refused: dict[int, int] = {}  # status -> count, for tests and logs

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        reason = fetch_refusal(scope.get("path", ""))
        if reason:
            await self._refuse(send, 403, reason, scope)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        cap = self.upload_bytes if multipart else self.json_bytes
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._refuse(send, 400, "bad Content-Length", scope)
                return
            if int(length) > cap:
                await self._refuse(send, 413, f"request body of {int(length)} bytes; the limit is {cap}", scope)
                return
        if not multipart and scope.get("method") not in ("GET", "HEAD"):
            await self._buffered(scope, receive, send, cap)
        else:
            await self._streamed(scope, receive, send, cap)

    async def _buffered(self, scope: dict, receive: Receive, send: Send, cap: int) -> None:
        """Read a (small) body whole, refuse it when too large or when it names a URL to fetch, then pass it on."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > cap:
                await self._refuse(send, 413, f"request body over the limit of {cap} bytes", scope)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body.lstrip()[:1] in (b"{", b"["):
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):  # not JSON after all: the app says so
                data = None
            url = url_in_payload(data)
            if url is not None:
                await self._refuse(send, 403, "this server fetches no URL on a request's behalf (a file's path "
                                              "is a URL)", scope)
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect the app may wait for

        await self.app(scope, replay, send)

    async def _streamed(self, scope: dict, receive: Receive, send: Send, cap: int) -> None:
        """Pass the body through as it arrives, counting it; past ``cap`` the app's answer becomes a 413."""
        state = {"seen": 0, "over": False, "started": False}

        async def counted() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > cap:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded(message: dict) -> None:
            if state["over"] and not state["started"]:
                return  # whatever the app answers to the cut body, the client gets the 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _BodyTooLarge:
            pass
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(send, 413, f"request body over the limit of {cap} bytes", scope)

    async def _refuse(self, send: Send, status: int, reason: str, scope: dict) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        log.info("refused %s %s: %d %s", scope.get("method"), scope.get("path", "")[:200], status, reason)
        body = (reason + "\n").encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------ a server's temp folder
class TempRoot:
    """A process's temporary folder ``DIR/pixelnn-web-PID-XXXXXXXX`` (DIR: the system's temp folder), removed
    by :meth:`cleanup`, at exit or when the object is collected. Making one first removes the folders of
    processes that died without removing theirs (:func:`remove_stale`): a SIGKILLed server's.

    The folder holds :data:`OWNER_FILE` (``pid start-time``; its modification time tells a later process that
    reuses the pid from the writer) and whatever the server keeps: ``work/`` (:class:`pixelnn.web.WebApp`'s
    download folders) and ``gradio/`` (Gradio's cache, ``GRADIO_TEMP_DIR``).
    """

    def __init__(self, parent: str | os.PathLike | None = None):
        parent = Path(parent or tempfile.gettempdir())
        remove_stale(parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=parent))
        (self.path / OWNER_FILE).write_text(f"{os.getpid()} {time.time():.3f}\n")
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the folder and everything in it (again: a no-op)."""
        self._finalizer()

    @property
    def removed(self) -> bool:
        return not self._finalizer.alive


def remove_stale(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove the ``pixelnn-web-PID-*`` folders in ``parent`` (default: the system's temp folder) of processes
    that are gone (:func:`pixelnn.io.pid_alive`, which also tells a reused pid by its start time). Folders of
    live processes, of other users and names without a pid are left alone. Returns the folders removed."""
    from pixelnn.io import pid_alive

    parent = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for d in entries:
        m = _TEMP_NAME.match(d.name)
        if m is None:
            continue
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            since = (d / OWNER_FILE).stat().st_mtime if (d / OWNER_FILE).exists() else st.st_mtime
        except OSError:
            continue
        if pid_alive(int(m["pid"]), since):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
            log.info("removed %s, the temporary folder of server process %s (no longer running)", d, m["pid"])
    return removed


# ------------------------------------------------------------------------------------ login and binding
def parse_auth(value: str, source: str = "--auth") -> tuple[str, str]:
    """``USER:PASSWORD`` (split at the first colon) as ``(user, password)``; anything else is a one-line
    PixelNNError naming ``source`` (``--auth``, ``PIXELNN_AUTH``) that never repeats the password."""
    user, colon, password = str(value).partition(":")
    if not colon:
        raise PixelNNError(f"{source} must be USER:PASSWORD (the value given has no ':')")
    if not user or not password:
        raise PixelNNError(f"{source} must be USER:PASSWORD with a non-empty user and password")
    if user != user.strip() or any(not c.isprintable() for c in user):
        raise PixelNNError(f"{source}: the user name must not start or end with spaces or hold control characters")
    if any(c in "\r\n\0" for c in password):
        raise PixelNNError(f"{source}: the password must not hold a newline or NUL character")
    return user, password


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only: ``localhost`` or a loopback address (127.0.0.0/8,
    ``::1``). Anything else (``0.0.0.0``, ``::``, a LAN address, another host name) is reachable from the network."""
    h = str(host).strip().lower().rstrip(".")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["MAX_JSON_BYTES", "MULTIPART_OVERHEAD", "RequestLimits", "TempRoot", "fetch_refusal", "is_loopback",
           "parse_auth", "remove_stale", "upload_cap", "url_in_payload", "url_like"]
