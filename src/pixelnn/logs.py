"""What the ``pixelnn`` command logs: PixelNN's own progress and warnings by default, everything with ``-v``.

Libraries PixelNN uses speak at INFO on import or on every request: FAISS's loader (``Could not load
library with AVX2 support due to: ModuleNotFoundError(...)``), Ray, Gradio and its HTTP clients
(httpx, httpcore, urllib3), matplotlib, h5py, numexpr (``NumExpr defaulting to 8 threads``), zarr and
fsspec. :func:`configure` keeps them at WARNING and above unless ``-v`` is given, in two ways: the loggers
of :data:`THIRD_PARTY_LOGGERS` get level WARNING, and the handler it installs drops every record below
WARNING that is not PixelNN's (:data:`OWN_INFO_ONLY`), whatever level a library gave its own logger.
Warnings and errors of any library still print.
"""

from __future__ import annotations

import logging

#: The top-level loggers of libraries that log at INFO or DEBUG in PixelNN's commands.
THIRD_PARTY_LOGGERS = ("faiss", "ray", "gradio", "gradio_client", "httpx", "httpcore", "urllib3", "matplotlib",
                       "h5py", "numexpr", "PIL", "fsspec", "numcodecs", "zarr", "asyncio", "uvicorn", "torch",
                       "filelock", "multipart", "python_multipart", "websockets", "botocore", "s3fs")
#: The log format of the command line.
FORMAT = "%(levelname)s %(name)s: %(message)s"


def is_own(name: str) -> bool:
    """Whether a logger name is PixelNN's (``pixelnn`` or ``pixelnn.*``)."""
    return name == "pixelnn" or name.startswith("pixelnn.")


class _OwnInfoOnly(logging.Filter):
    """Pass PixelNN's records and anyone's warnings and errors; drop other libraries' INFO and DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_own(record.name)


#: The filter :func:`configure` puts on its handler unless verbose (one instance: adding it twice is a no-op).
OWN_INFO_ONLY = _OwnInfoOnly()


def quiet_third_party(verbose: bool = False) -> None:
    """Set the loggers of :data:`THIRD_PARTY_LOGGERS` to WARNING (``verbose``: back to NOTSET, so they follow
    the root logger). Also called in Ray workers, which do not run :func:`configure`."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def configure(verbose: bool = False, quiet: bool = False) -> int:
    """Set up the command line's logging; returns PixelNN's level.

    PixelNN logs at INFO (``quiet``: WARNING; ``verbose``: DEBUG), other libraries at WARNING (``verbose``:
    DEBUG). A handler on stderr is added to the root logger when it has none (``logging.basicConfig``: an
    application or a test runner that installed its own keeps it, and its root level); the filter
    :data:`OWN_INFO_ONLY` goes on the handler this function added.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format=FORMAT)
        for handler in root.handlers:
            handler._pixelnn = True  # type: ignore[attr-defined]
    ours = [h for h in root.handlers if getattr(h, "_pixelnn", False)]
    if ours:  # the root logger's level too is ours to set then
        root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in ours:
        if verbose:
            handler.removeFilter(OWN_INFO_ONLY)
        else:
            handler.addFilter(OWN_INFO_ONLY)
    quiet_third_party(verbose)
    logging.getLogger("pixelnn").setLevel(level)
    return level


__all__ = ["FORMAT", "OWN_INFO_ONLY", "THIRD_PARTY_LOGGERS", "configure", "is_own", "quiet_third_party"]
