"""Atomic file writing and checked reading.

Writing: nothing on disk is ever left half-written. Every writer produces a temporary file next to the
destination and renames it into place (``os.replace`` is atomic on POSIX), so a crash or Ctrl-C leaves
either the old file or the new one. Temporary names carry the writer's process id (``.NAME.tmp.PID.*``); a
folder swap keeps the previous folder as ``.NAME.old.PID.*`` until the new one is in place, and
:func:`recover` (run by every opener and writer of NAME) restores it when a kill came between the two
renames and deletes what dead writers left. :func:`atomic_dir` replaces only folders of its own kind
(:func:`check_replaceable`), and :func:`writer_lock` keeps library writers one at a time
(docs/reliability.md, "User data is never destroyed").

Reading: every JSON and JSON-lines file the project reads goes through :func:`read_json` /
:func:`read_jsonl` (and :func:`parse_json` for JSON held elsewhere, e.g. safetensors metadata), which turn a
missing, empty, binary, truncated or wrongly typed file into a one-line :class:`~pixelnn.errors.PixelNNError`
naming the file; :func:`need` and :func:`config_from` check the keys read from it. :func:`check_sha256` and
:func:`check_tensors_sha256` refuse weights that differ from their recorded digest (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix for the temporary file (some writers pick the format from it). Defaults to the
        destination's suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------------ checked reads
#: What a JSON value is called in error messages.
_JSON_KINDS = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
               (dict, "an object"), (type(None), "null"))


def json_kind(value: Any) -> str:
    """``"an object"``, ``"a list"``, ``"a string"``... : what a parsed JSON value is, for error messages."""
    for t, name in _JSON_KINDS:
        if isinstance(value, t):
            return name
    return type(value).__name__


def _expected(expect: type | tuple[type, ...]) -> str:
    kinds = expect if isinstance(expect, tuple) else (expect,)
    return " or ".join(dict(_JSON_KINDS).get(t, t.__name__) for t in kinds)


def _fits_kind(value: Any, expect: type | tuple[type, ...]) -> bool:
    kinds = expect if isinstance(expect, tuple) else (expect,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not a number here
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _source(source: str | os.PathLike, what: str | None) -> str:
    return f"{what} {source}" if what else str(source)


def parse_json(data: str | bytes, source: str | os.PathLike, what: str | None = None,
               expect: type | tuple[type, ...] | None = None) -> Any:
    """Parse JSON text read from ``source`` (a path, or e.g. ``"PATH metadata 'config'"``), with one-line errors.

    Parameters
    ----------
    data : str or bytes
        The text (bytes are decoded as UTF-8).
    source : str or path
        Named at the start of every error message.
    what : str, optional
        What the file is ("model config", "dataset manifest"...), put before ``source`` in messages.
    expect : type or tuple of types, optional
        The top-level value must be one of these (``dict`` for an object, ``list``...).

    Raises
    ------
    PixelNNError
        ``"SOURCE: empty"``, ``"SOURCE: not valid JSON (line L, column C): ..."``, ``"SOURCE: not valid JSON
        (not UTF-8 text: a binary or damaged file)"``, ``"SOURCE: expected an object, got a list"``.
    """
    from pixelnn.errors import PixelNNError

    src = _source(source, what)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise PixelNNError(f"{src}: not valid JSON (not UTF-8 text: a binary or damaged file)") from None
    if not data.strip():
        raise PixelNNError(f"{src}: empty (expected JSON{'' if expect is None else ': ' + _expected(expect)})")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        cut = " (truncated?)" if e.pos >= len(data.rstrip()) or e.msg.startswith("Unterminated") else ""
        raise PixelNNError(f"{src}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}{cut}") from None
    except RecursionError:
        raise PixelNNError(f"{src}: not valid JSON (nested too deeply)") from None
    if expect is not None and not _fits_kind(obj, expect):
        raise PixelNNError(f"{src}: expected {_expected(expect)}, got {json_kind(obj)}")
    return obj


def _read_bytes(path: Path, src: str) -> bytes:
    from pixelnn.errors import PixelNNError

    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PixelNNError(f"{src}: missing") from None
    except IsADirectoryError:
        raise PixelNNError(f"{src}: is a folder, expected a file") from None
    except OSError as e:
        raise PixelNNError(f"{src}: cannot read: {e.strerror or e}") from None


def read_text(path: str | os.PathLike, what: str | None = None) -> str:
    """A UTF-8 text file's content; one-line PixelNNErrors for a missing, unreadable or binary file."""
    from pixelnn.errors import PixelNNError

    path = Path(path)
    src = _source(path, what)
    try:
        return _read_bytes(path, src).decode("utf-8")
    except UnicodeDecodeError:
        raise PixelNNError(f"{src}: not UTF-8 text (a binary or damaged file)") from None


def read_json(path: str | os.PathLike, what: str | None = None,
              expect: type | tuple[type, ...] | None = None) -> Any:
    """Read a JSON file; every problem is a one-line PixelNNError naming the file.

    >>> config = read_json("models/shoes/config.json", what="model config", expect=dict)  # doctest: +SKIP

    Parameters
    ----------
    path : path-like
    what : str, optional
        What the file is, for messages (``"model config models/shoes/config.json: ..."``).
    expect : type or tuple of types, optional
        The type the top-level value must have (``dict``: a JSON object).

    Raises
    ------
    PixelNNError
        Missing, unreadable, empty, binary, not valid JSON (with the line and column), or of another
        type than ``expect`` (see :func:`parse_json`).
    """
    path = Path(path)
    return parse_json(_read_bytes(path, _source(path, what)), path, what, expect)


def read_jsonl(path: str | os.PathLike, what: str | None = None,
               expect: type | tuple[type, ...] | None = dict) -> list[Any]:
    """Read a JSON-lines file (one value per line, blank lines skipped) with one-line errors naming the line.

    Raises
    ------
    PixelNNError
        ``"PATH: missing"``, ``"PATH: line 3: not valid JSON (column 7): ..."``, ``"PATH: line 3: expected an
        object, got a list"``, ``"PATH: not UTF-8 text ..."``.
    """
    from pixelnn.errors import PixelNNError

    path = Path(path)
    src = _source(path, what)
    data = _read_bytes(path, src)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PixelNNError(f"{src}: not valid JSON lines (not UTF-8 text: a binary or damaged file)") from None
    out = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            last = not any(rest.strip() for rest in lines[n:])
            cut = " (truncated?)" if last and not text.endswith("\n") else ""
            raise PixelNNError(f"{src}: line {n}: not valid JSON (column {e.colno}): {e.msg}{cut}") from None
        except RecursionError:
            raise PixelNNError(f"{src}: line {n}: not valid JSON (nested too deeply)") from None
        if expect is not None and not _fits_kind(obj, expect):
            raise PixelNNError(f"{src}: line {n}: expected {_expected(expect)}, got {json_kind(obj)}")
        out.append(obj)
    return out


def need(obj: Any, key: str, source: str | os.PathLike, expect: type | tuple[type, ...] | None = None) -> Any:
    """``obj[key]`` of a JSON object read from ``source``; a one-line PixelNNError when ``obj`` is not an object,
    the key is missing, or its value is not of the ``expect`` type.

    >>> need({"task": {}}, "task", "config.json", dict)
    {}
    """
    from pixelnn.errors import PixelNNError

    if not isinstance(obj, dict):
        raise PixelNNError(f"{source}: expected an object, got {json_kind(obj)}")
    if key not in obj:
        raise PixelNNError(f"{source}: missing key {key!r}")
    value = obj[key]
    if expect is not None and not _fits_kind(value, expect):
        raise PixelNNError(f"{source}: {key!r} should be {_expected(expect)}, got {json_kind(value)} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits_hint(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type hint (int, float, str, bool, X | None, tuple[X, ...], dict...)."""
    import types
    import typing

    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits_hint(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float, str, bool):
        return _fits_kind(value, hint)
    if origin in (tuple, list, set, frozenset) or hint in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if isinstance(value, str) and args == [str]:
            return True  # a comma-separated list ("relu1_2,relu2_2"), split by the config itself
        return isinstance(value, (list, tuple)) and all(_fits_hint(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _hint_name(hint: Any) -> str:
    """``int`` -> "an integer", ``float | None`` -> "a number or null", ``tuple[str, ...]`` -> "a list"..."""
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    base = typing.get_origin(hint) or hint
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if base in (tuple, list) and args:
        return f"a list ({_hint_name(args[0])} each)"
    return {tuple: "a list", list: "a list", set: "a list", frozenset: "a list"}.get(base) or \
        dict(_JSON_KINDS).get(base, getattr(base, "__name__", str(base)))


def config_from(cls: type, d: Any, source: str | os.PathLike, key: str | None = None) -> Any:
    """A config dataclass (``TaskConfig``, ``RegressorConfig``...) from a JSON object read from ``source``, with
    one-line errors naming the source and the bad key.

    Unknown keys are ignored and missing ones take their defaults (as ``cls.from_dict`` does); a value of
    the wrong JSON type (``"size": "big"``) and a value the config refuses are PixelNNErrors.

    Parameters
    ----------
    cls : dataclass type
        Built with ``cls.from_dict(d)`` when it has one, else ``cls(**known keys)``.
    d : Any
        The parsed JSON value (should be an object).
    source : str or path
        The file it was read from (start of every message).
    key : str, optional
        Where ``d`` sits in the file (``"task"``), for messages: ``"config.json: task.size should be ..."``.
    """
    import dataclasses
    import typing

    from pixelnn.errors import PixelNNError

    where = f"{key} " if key else ""
    if not isinstance(d, dict):
        raise PixelNNError(f"{source}: {where or 'the value '}should be an object, got {json_kind(d)}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in d and not _fits_hint(d[f.name], hints.get(f.name, Any)):
            name = f"{key}.{f.name}" if key else f.name
            raise PixelNNError(f"{source}: {name} should be {_hint_name(hints[f.name])}, got {json_kind(d[f.name])} "
                               f"{_short(d[f.name])}")
    try:
        if hasattr(cls, "from_dict"):
            return cls.from_dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
    except PixelNNError as e:
        raise PixelNNError(f"{source}: {key + ': ' if key else ''}{e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise PixelNNError(f"{source}: bad {key or cls.__name__}: {e}") from None


# ------------------------------------------------------------------------------------ checksums
#: Files at least this large are hashed once per process (keyed by path, size and modification time);
#: smaller ones (every stage-1 regressor) are hashed on every verification.
HASH_ONCE_BYTES = 256 * 2**20
_HASHED: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks (cached for files of :data:`HASH_ONCE_BYTES` or more)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if st.st_size >= HASH_ONCE_BYTES and key in _HASHED:
        return _HASHED[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    if st.st_size >= HASH_ONCE_BYTES:
        _HASHED[key] = h.hexdigest()
    return h.hexdigest()


def check_sha256(path: str | os.PathLike, want: str | None, what: str = "weights", how: str = "") -> None:
    """Refuse a file whose sha256 is not the recorded ``want`` (no check when nothing is recorded).

    Raises
    ------
    PixelNNError
        ``"weights PATH do not match their recorded sha256 (file damaged or replaced); HOW"``.
    """
    from pixelnn.errors import PixelNNError

    if not want:
        return
    try:
        got = file_sha256(path)
    except FileNotFoundError:
        raise PixelNNError(f"{what} {path}: missing{'; ' + how if how else ''}") from None
    except OSError as e:
        raise PixelNNError(f"{what} {path}: cannot read: {e.strerror or e}") from None
    if got != want:
        raise PixelNNError(f"{what} {path} do not match their recorded sha256 (file damaged or replaced)"
                           f"{'; ' + how if how else ''}")


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """A sha256 over the names, dtypes, shapes and bytes of a dict of tensors (in name order).

    Checkpoints written by this project record it in their safetensors metadata (``tensors_sha256``), so that
    loading them can tell a damaged file (a flipped bit in a weight) from a good one.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_tensors_sha256(tensors: dict[str, Any], meta: dict[str, str], path: str | os.PathLike,
                         what: str = "weights", how: str = "") -> None:
    """Refuse tensors whose digest differs from the ``tensors_sha256`` their file's metadata records (files
    written before it was recorded are not checked)."""
    from pixelnn.errors import PixelNNError

    want = (meta or {}).get("tensors_sha256")
    if want and tensors_sha256(tensors) != want:
        raise PixelNNError(f"{what} {path} do not match their recorded sha256 (file damaged or replaced)"
                           f"{'; ' + how if how else ''}")


def load_state_checked(module: Any, state: dict[str, Any], source: str | os.PathLike, what: str = "weights",
                       how: str = "", assign: bool = False) -> None:
    """``module.load_state_dict(state)`` (strict), with a one-line PixelNNError naming ``source`` and the first
    missing, unexpected or wrongly shaped tensors when the file's tensors do not fit the module (e.g. metadata
    saying ``base_channels`` 32 over tensors of a 16-channel network). ``assign=True`` makes the tensors the
    module's own instead of copying them, so ``module`` may have been built on the ``meta`` device."""
    from pixelnn.errors import PixelNNError

    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    problems = []
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {list(got[k])} (expected {list(want[k])})" for k in want if k in got and got[k] != want[k]]
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({', '.join(unexpected[:3])}"
                        f"{', ...' if len(unexpected) > 3 else ''})")
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:2])}{'; ...' if len(shapes) > 2 else ''})")
    tail = f"; {how}" if how else ""
    if problems:
        raise PixelNNError(f"{what} {source} do not fit the architecture their metadata describes: "
                           f"{', '.join(problems)}{tail}")
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except (RuntimeError, ValueError, TypeError) as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).strip())
        raise PixelNNError(f"{what} {source} cannot be loaded: {first}{tail}") from None


def read_folder_config(folder: str | os.PathLike, name: str, kind: str, how: str) -> Any:
    """``folder/name`` read as a JSON object; a one-line PixelNNError saying the folder is not a ``kind`` folder
    (and ``how`` to make one) when the file is missing."""
    from pixelnn.errors import PixelNNError

    path = Path(folder) / name
    if not path.is_file():
        raise PixelNNError(f"{folder} is not a {kind} directory (no {name}); {how}")
    return read_json(path, expect=dict)


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line; a torn last line (a writer killed mid-line) is dropped first, so the file stays
    valid JSON lines."""
    path = Path(path)
    line = (json.dumps(obj) + "\n").encode()
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
                log.warning("%s: dropped a torn last line (a run killed while writing it)", path)
        f.write(line)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a .npy array atomically (never pickled)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def save_image(path: str | os.PathLike, image: np.ndarray, *, atomic: bool = True,
               compress_level: int | None = None) -> None:
    """Save a uint8 image (H, W), (H, W, 1) or (H, W, 3) as PNG/JPEG atomically.

    ``atomic=False`` writes ``path`` directly, for files inside a folder that is itself renamed into place
    when complete (:func:`atomic_dir`). ``compress_level`` (PNG, 0-9): None is Pillow's 6."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        raise TypeError(f"save_image expects uint8, got {arr.dtype}")
    keywords = {} if compress_level is None else {"compress_level": compress_level}
    if not atomic:
        Image.fromarray(arr).save(path, **keywords)
        return
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, **keywords)


# ------------------------------------------------------------------------------------ recoverable swaps
#: Temporary names next to a destination NAME (docs/reliability.md, "User data is never destroyed"):
#: ``.NAME.tmp.PID.*`` (being written by process PID), ``.NAME.old.PID.*`` (the previous folder while PID
#: swaps a new one in: complete, restored when NAME is missing) and ``.NAME.trash.PID.*`` (being deleted).
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)\.(?P<pid>\d+)(?:\..*)?$")


def temp_prefix(path: str | os.PathLike) -> str:
    """``.NAME.tmp.PID.``: the prefix of this process's temporary files and folders for ``path``."""
    return f".{Path(path).name}.tmp.{os.getpid()}."


def temp_owner(path: str | os.PathLike) -> int | None:
    """The process id in a temporary name (``.NAME.tmp.PID.*``, ``.NAME.old.PID.*``, ``.NAME.trash.PID.*``), else None."""
    m = _TEMP_NAME.match(Path(path).name)
    return int(m["pid"]) if m else None


def crash_point(name: str) -> None:
    """Fault injection for the crash-consistency tests: SIGKILL this process here when ``$PIXELNN_CRASH_AT``
    is ``name`` (points: ``swap``, between the two renames of a folder swap; ``checkpoint``, between a
    training checkpoint and its weights file; ``shard``, after a library shard and before its manifest)."""
    if os.environ.get("PIXELNN_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch; Linux /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (this process is alive).

    ``since``: when the entry it would have written was last modified; a process that started after that
    is another one that reuses the number (Linux), so the writer is dead.
    """
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # PermissionError: someone else's process; go on to /proc
    try:  # a killed child not yet reaped is a zombie: dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2:][:1] == "Z":
            return False
    except (OSError, ValueError):
        return True
    if since is not None:
        started = _process_start(pid)
        if started is not None and started > since + 2.0:
            return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _discard(path: Path) -> None:
    """Delete a folder: renamed to ``.NAME.trash.PID.*`` first, so that a half-deleted folder never keeps a
    name that recovery would restore."""
    trash = path.with_name(f".{path.name.lstrip('.').split('.old.')[0]}.trash.{os.getpid()}.{os.urandom(3).hex()}")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    _remove(trash)


def recover(path: str | os.PathLike, wait: float = 2.0) -> list[str]:
    """Finish or undo what killed writers left next to ``path`` (a file or folder PixelNN writes).

    - ``.NAME.old.PID.*`` of a dead process: if ``path`` is missing, the swap was killed between its two
      renames, and the previous copy is renamed back onto ``path``; if ``path`` exists, the swap completed
      and the previous copy is deleted.
    - ``.NAME.tmp.PID.*`` and ``.NAME.trash.PID.*`` of a dead process: deleted.
    - Entries of a live process are left alone; when ``path`` is missing while a live process swaps it,
      this waits up to ``wait`` seconds for the swap to finish.

    Returns one line per action (also logged). Raises a one-line PixelNNError, saying how to restore it by
    hand, when a previous copy cannot be renamed back.
    """
    path = Path(path)
    return _recover_entries(path.parent, path.name, wait)


def recover_all(folder: str | os.PathLike) -> list[str]:
    """:func:`recover` for every destination inside ``folder`` (one listing): restores interrupted swaps and
    deletes the temporary entries of dead writers (e.g. the ``.library.tmp.PID.*`` of a killed build)."""
    return _recover_entries(Path(folder), None, 0.0)


def _recover_entries(parent: Path, name: str | None, wait: float) -> list[str]:
    from pixelnn.errors import PixelNNError

    try:
        entries = os.listdir(parent)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    entries = [e for e in entries if e.startswith(f".{name}." if name is not None else ".")]
    found = []
    for e in sorted(entries):
        m = _TEMP_NAME.match(e)
        if m and (name is None or m["name"] == name):
            found.append((m["name"], m["kind"], int(m["pid"]), parent / e))
    done: list[str] = []
    for base, kind, pid, entry in found:
        final = parent / base
        try:  # a temporary entry is created by its writer, so it is not older than the writer; a renamed one
            mtime = entry.lstat().st_mtime if kind == "tmp" else None  # (old, trash) keeps its own mtime
        except FileNotFoundError:
            continue
        alive = pid_alive(pid, mtime)
        if alive and name is None:
            continue  # recover_all: a live writer's entries are its own business
        if kind == "old" and alive:
            deadline = time.monotonic() + wait
            while not final.exists() and entry.exists() and pid_alive(pid, mtime) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not final.exists() and entry.exists() and pid_alive(pid, mtime):
                raise PixelNNError(f"{final} is being replaced by process {pid} (its previous copy is {entry.name}); "
                                   f"retry when it has finished")
            if pid_alive(pid, mtime) or not entry.exists():
                continue
        elif alive:
            continue
        if kind == "old" and not final.exists() and not final.is_symlink():
            try:
                os.rename(entry, final)
            except FileNotFoundError:
                continue  # another process restored it first
            except OSError as err:
                raise PixelNNError(f"{final} is missing: its previous copy {entry} (left by process {pid}, killed "
                                   f"while replacing it) cannot be renamed back ({err.strerror or err}); restore "
                                   f"it with `mv '{entry}' '{final}'`") from None
            msg = f"restored {final} from {entry.name}: process {pid} was killed while replacing it"
            log.warning(msg)
        elif kind == "old":
            _discard(entry)
            msg = f"deleted {entry}: the previous copy of {final}, left by process {pid} after replacing it"
            log.info(msg)
        else:
            _remove(entry)
            msg = f"deleted {entry}, left by process {pid} (killed while writing it)"
            log.info(msg)
        done.append(msg)
    return done


#: A folder kind PixelNN writes: its manifest file and that manifest's ``format``.
Marker = tuple[str, str]


def written_by_pixelnn(path: str | os.PathLike, markers: Sequence[Marker]) -> bool:
    """Whether the existing folder ``path`` may be replaced: empty, or holding one of ``markers``' manifest
    files (a JSON object whose ``format`` is the marker's, or a damaged file of that name)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True
    for file, fmt in markers:
        f = path / file
        if not f.is_file():
            continue
        try:
            obj = json.loads(f.read_bytes().decode("utf-8"))
        except (OSError, ValueError):
            return True  # PixelNN's manifest, damaged: the folder is still PixelNN's
        if isinstance(obj, dict) and obj.get("format") == fmt:
            return True
    return False


def check_replaceable(path: str | os.PathLike, markers: Sequence[Marker], what: str) -> None:
    """Refuse (one line) to replace an existing ``path`` that PixelNN did not write (see :func:`written_by_pixelnn`)."""
    from pixelnn.errors import PixelNNError

    path = Path(path)
    if not (path.exists() or path.is_symlink()) or written_by_pixelnn(path, markers):
        return
    kind = "a folder" if path.is_dir() and not path.is_symlink() else "a file or link"
    files = " or ".join(f"{file} of format {fmt!r}" for file, fmt in markers)
    raise PixelNNError(f"{path} exists and is {kind} PixelNN did not write (no {files}); PixelNN replaces only "
                       f"its own {what} folders: move it away or choose another output")


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the complete folder ``src`` onto ``dst``. An existing ``dst`` is first renamed to
    ``.DST.old.PID.*`` and deleted only after ``src`` is in place, so a kill between the two renames is undone
    by the next :func:`recover` of ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}.{os.urandom(3).hex()}")
        os.replace(dst, old)
        crash_point("swap")
        os.replace(src, dst)
        _discard(old)
    else:
        os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, replaces: Sequence[Marker] | None = None,
               what: str = "output", recover_parent: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name (``.NAME.tmp.PID.*``) and move it into place when the block
    succeeds.

    First, what killed writers left next to ``path`` is recovered (:func:`recover_all` of its parent). If
    ``path`` exists and ``overwrite`` is true, it is replaced only after the new one is complete
    (:func:`replace_dir`: recoverable), and only when it is empty or one of ``replaces`` (a
    ``(manifest file, format)`` marker of the folder kind): PixelNN never replaces a folder it did not write.
    ``recover_parent=False`` skips the recovery (a caller that writes many folders into one parent recovers
    it once).
    """
    from pixelnn.errors import PixelNNError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if recover_parent:
        recover_all(path.parent)
    if path.exists() and not overwrite:
        raise PixelNNError(f"{path} already exists; pass --overwrite to replace it")
    if replaces is not None:
        check_replaceable(path, replaces, what)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise PixelNNError(f"{path} already exists; pass --overwrite to replace it")
            if replaces is not None:
                check_replaceable(path, replaces, what)
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------ writer locks
#: Seconds a writer waits for another writer's lock before it is refused (``$PIXELNN_LOCK_TIMEOUT``).
LOCK_TIMEOUT = 600.0
_HELD: dict[str, list] = {}  # lock file -> [fd, depth], the locks this process holds
_HELD_GUARD = threading.Lock()
_THREAD_LOCKS: dict[str, threading.RLock] = {}


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of the writers of ``target``: ``.NAME.lock`` beside it (it outlives a replacement of the
    folder by ``--overwrite`` and exists before a new folder does)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def lock_timeout() -> float:
    env = os.environ.get("PIXELNN_LOCK_TIMEOUT")
    if env:
        try:
            return max(0.0, float(env))
        except ValueError:
            from pixelnn.errors import PixelNNError

            raise PixelNNError(f"PIXELNN_LOCK_TIMEOUT should be a number of seconds, got {env!r}") from None
    return LOCK_TIMEOUT


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


@contextlib.contextmanager
def writer_lock(target: str | os.PathLike, what: str = "library", timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the writers of ``target`` (an ``fcntl.flock`` on :func:`lock_path`).

    Re-entrant within a process. A second writer logs ``waiting for another writer of TARGET (pid N)...``
    and waits up to ``timeout`` seconds (default :func:`lock_timeout`; 0: refuse at once), then is refused
    with a one-line PixelNNError. The kernel releases the lock when its holder dies, so a killed writer
    never leaves a stale lock.
    """
    import fcntl

    from pixelnn.errors import PixelNNError

    target = Path(target)
    lock = lock_path(target)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixelNNError(f"cannot create the folder of {target}: {e.strerror or e}") from None
    key = str(lock.resolve())
    with _HELD_GUARD:
        rlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    limit = lock_timeout() if timeout is None else max(0.0, float(timeout))
    t0 = time.monotonic()
    if not (rlock.acquire(timeout=limit) if limit > 0 else rlock.acquire(blocking=False)):
        raise PixelNNError(f"{target} is being written by another thread of this process; retry when it has finished")
    try:
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PixelNNError(f"cannot write {target}: its lock file {lock} cannot be created "
                               f"({e.strerror or e})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(lock)
                if limit <= 0:
                    raise PixelNNError(f"another writer of {target} (pid {holder}) is running; retry when it has "
                                       f"finished (or set PIXELNN_LOCK_TIMEOUT to wait for it)") from None
                log.warning("waiting for another writer of %s (pid %s) to finish (up to %g s; PIXELNN_LOCK_TIMEOUT "
                            "sets the wait)...", target, holder, limit)
                while True:
                    time.sleep(0.1)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() - t0 >= limit:
                            raise PixelNNError(f"another writer of {target} (pid {_holder(lock)}) still runs after "
                                               f"{limit:g} s of waiting; retry when it has finished (or set "
                                               f"PIXELNN_LOCK_TIMEOUT to wait longer)") from None
                log.info("got the lock of %s after %.1f s", target, time.monotonic() - t0)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = [fd, 1]
            try:
                yield
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # releases the flock
    finally:
        rlock.release()


def holds_lock(target: str | os.PathLike) -> bool:
    """Whether this process holds :func:`writer_lock` of ``target``."""
    return str(lock_path(target).resolve()) in _HELD


def cache_dir() -> Path:
    """Folder for converted weights (safetensors made from the shipped packages' files).

    ``$PIXELNN_CACHE`` if set, else ``$XDG_CACHE_HOME/pixelnn`` or ``~/.cache/pixelnn``.
    """
    env = os.environ.get("PIXELNN_CACHE")
    if env:
        d = Path(env)
    else:
        d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelnn"
    d.mkdir(parents=True, exist_ok=True)
    return d


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, with a clear error if it is missing."""
    import importlib.util

    from pixelnn.errors import PixelNNError

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PixelNNError(f"package {package!r} is not installed; run scripts/install.sh "
                           f"(it installs the weight packages with pip --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise PixelNNError(f"{path} is missing from the installed {package!r} package")
    return path


def zip_dir(folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip a folder (entries under the folder's name, e.g. ``result/output_001.png``), atomically.

    Returns the zip's path.
    """
    import zipfile

    folder, zip_path = Path(folder), Path(zip_path)
    with atomic_path(zip_path, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, Path(folder.name) / f.relative_to(folder))
    return zip_path
