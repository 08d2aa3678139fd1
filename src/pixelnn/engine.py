"""Engines for batch synthesis and library builds: ``local`` (this process) or ``ray`` (a Ray Data actor pool).

>>> report = synthesize_files(["sketches/"], "models/shoes-edges", "results/", engine="ray", num_workers=2)  # doctest: +SKIP
>>> lib = build_library(plan, engine="ray", address="head:6379", num_workers=8)             # doctest: +SKIP

The ``ray`` engine turns the inputs (or build blocks) into a Ray dataset and maps it over an actor pool:
each actor loads the model and library once (:class:`pixelnn.synthesize.SynthesisWorker`, :class:`BlockWorker`)
and writes
its results itself, exactly as the local path writes them (:func:`pixelnn.pipeline.save_result`:
atomic folder, manifest last), so both engines give bit-identical files.

Failures: a worker process that dies is restarted and its task retried by Ray (``max_restarts=-1``,
``max_task_retries=retries``); an item whose result comes back failed (an exception other than a
:class:`~pixelnn.errors.PixelNNError`, which is about the input and final) or that never came back is
retried by the driver, alone, up to ``retries`` more rounds. What still fails is reported (summary line,
``OUT/failures.jsonl``), never dropped; a result already written in this run is never written again.

Nothing here imports Ray at module level: only ``--engine ray`` does. This module knows no pipeline: batch
synthesis over Ray (:func:`pixelnn.synthesize.synthesize_ray`) and builds (:func:`build_library`) use its
generic parts (:func:`init_ray`, :func:`ray_map`, :func:`write_failures`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from pixelnn.errors import PixelNNError

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
#: Retries of a failed item after its first attempt.
DEFAULT_RETRIES = 2
#: Written into the results folder when some inputs failed (one JSON object per line).
FAILURES_FILE = "failures.jsonl"
#: Seconds to wait for a TCP connection to ``--address`` before giving up.
CONNECT_TIMEOUT_S = 5.0

# item status, as workers return it
OK, FAILED, BAD, FATAL = "ok", "failed", "bad", "fatal"


# ---------------------------------------------------------------------------------------------- CLI
def add_engine_options(p: Any) -> None:
    """``--engine``, ``--address``, ``--num-workers``, ``--cpus-per-worker``, ``--gpus-per-worker``, ``--retries``."""
    g = p.add_argument_group("engine (docs/scale.md, section Engine)")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process (default); ray: a Ray Data actor pool, each actor loads the model once")
    g.add_argument("--address", default=None, metavar="ADDRESS",
                   help="a running Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default: start a local one")
    g.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="actors (default: as many as the cluster's CPUs allow at --cpus-per-worker)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs per actor, also its torch threads (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per actor (default 0)")
    g.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"retries of a failed input or block (default {DEFAULT_RETRIES})")


def engine_options(args: Any) -> dict[str, Any]:
    """The engine options of parsed arguments, as keyword arguments of :func:`synthesize_ray` / :func:`build_library`."""
    return {"engine": args.engine, "address": args.address, "num_workers": args.num_workers,
            "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker,
            "retries": args.retries}


def check_engine_options(engine: str = "local", address: str | None = None, num_workers: int | None = None,
                         cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                         retries: int = DEFAULT_RETRIES) -> None:
    """One-line PixelNNErrors for bad engine options."""
    if engine not in ENGINES:
        raise PixelNNError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if num_workers is not None and num_workers < 1:
        raise PixelNNError(f"--num-workers must be >= 1, got {num_workers}")
    if not 0 < cpus_per_worker < math.inf:  # also refuses NaN
        raise PixelNNError(f"--cpus-per-worker must be > 0, got {cpus_per_worker}")
    if not 0 <= gpus_per_worker < math.inf:
        raise PixelNNError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if retries < 0:
        raise PixelNNError(f"--retries must be >= 0, got {retries}")
    if engine == "local" and (address or (num_workers or 1) > 1 or gpus_per_worker):
        raise PixelNNError("--address, --num-workers and --gpus-per-worker need --engine ray")


def one_line(e: BaseException) -> str:
    """An exception as one line (its last non-empty line for Ray's multi-line errors), with its type."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[-1] if lines else ""
    if isinstance(e, PixelNNError):
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def write_failures(out_dir: str | Path, failures: Sequence[dict[str, Any]]) -> Path | None:
    """``OUT/failures.jsonl``: one ``{"input", "error", "attempts"}`` per failed item (atomic); removes a stale
    one when nothing failed. Returns the file, or None."""
    path = Path(out_dir) / FAILURES_FILE
    if not failures:
        if path.is_file():
            path.unlink()
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text("".join(json.dumps(f) + "\n" for f in failures))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- Ray
def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to HOST:PORT (or ray://HOST:PORT) within ``timeout`` s, else a one-line PixelNNError."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise PixelNNError(f"Ray address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout) as sock:
            # Ray's GCS (and Ray Client) speak gRPC: an HTTP/2 server answers the client preface with a
            # SETTINGS frame. Anything else (a web server, a closed stream) would make ray.init retry for minutes.
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError as e:
        raise PixelNNError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                           f"start it with `ray start --head` or leave out --address") from None
    if len(head) < 9 or head[3] != 4:
        raise PixelNNError(f"{address} answers, but not as a Ray cluster (no gRPC); check the address and port "
                           f"(the head's GCS port, default 6379, or ray://HOST:10001)")


def quiet_ray_data() -> None:
    """Ray Data without its progress bars, start banners and stats logs (PixelNN shows its own bar)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_options.preserve_order = False
    ctx.execution_options.verbose_progress = False
    _quiet_loggers()


#: Ray loggers whose warnings are noise here: the local cluster's token note, "progress bars disabled".
_NOISY = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")


def _quiet_loggers() -> None:
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # "Dataset ... execution finished" etc.
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> tuple[Any, bool]:
    """Connect to ``address`` (fast one-line error when unreachable) or start a local cluster with
    ``num_cpus``; returns (ray, whether this call started the connection, to be shut down by the caller)."""
    try:
        import ray
    except ImportError:
        raise PixelNNError("--engine ray needs Ray: pip install 'pixelnn[cluster]'") from None
    if address:
        _check_reachable(address)
    if ray.is_initialized():  # the caller's connection (a notebook, the tests): use it, leave it open
        quiet_ray_data()
        return ray, False
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False,
                                  configure_logging=True)
    if address:
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=max(1, math.ceil(num_cpus)) if num_cpus else None,
                      num_gpus=math.ceil(num_gpus) if num_gpus else None)
    # a GCS that stops answering after the check: a few attempts, not Ray's 20 (each up to ~35 s)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "3")
    # Ray's C++ core logs at ERROR a notice per actor pool ("constructor arguments in the object store and
    # max_restarts > 0"); failures that matter reach us as Python exceptions, so only fatal lines print
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    _quiet_loggers()
    try:
        # the C++ core then announces at INFO, on fd 2, that it read RAY_BACKEND_LOG_LEVEL (ray#12010)
        with drop_stderr_lines("Set ray log level from environment variable"):
            ray.init(**kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, ...: one line
        raise PixelNNError(f"cannot connect to the Ray cluster at {address or 'local'}: {one_line(e)}") from None
    quiet_ray_data()
    return ray, True


@contextlib.contextmanager
def drop_stderr_lines(*needles: str) -> Iterator[None]:
    """Run a block with file descriptor 2 captured, then write what it wrote there except the lines that
    contain one of ``needles``: for notices that C/C++ code prints straight to fd 2, past ``logging``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in needles)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _DroppedBlocks(logging.Filter):
    """Collects (and silences) Ray Data's "exception raised from a task ... Ignoring" errors while rows are read."""

    LOGGER = "ray.data._internal.execution.streaming_executor_state"

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "Ignoring this exception" in record.getMessage():
            exc = record.exc_info[1] if record.exc_info else None
            self.errors.append(one_line(exc) if exc is not None else "a task failed")
            return False
        return True

    def rows(self, ds: Any) -> Iterable[dict[str, Any]]:
        """``ds.iter_rows()``, quiet (also without Ray Data's "won't fully utilize the concurrency" warning)."""
        logger = logging.getLogger(self.LOGGER)
        logger.addFilter(self)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
                yield from ds.iter_rows()
        finally:
            logger.removeFilter(self)


def _default_workers(ray: Any, cpus_per_worker: float, gpus_per_worker: float) -> int:
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus_per_worker)
    if gpus_per_worker:
        n = min(n, int(res.get("GPU", 0) // gpus_per_worker))
    return max(1, n)


def ray_map(ray: Any, keys: Sequence[str], worker_cls: type, worker_kwargs: dict[str, Any], *, num_workers: int,
            cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, retries: int = DEFAULT_RETRIES,
            batch_size: int = 1, on_result: Callable[[str, str, str, Any], None] | None = None,
            already_done: Callable[[str], bool] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Map ``keys`` over an actor pool of ``worker_cls(**worker_kwargs)`` in rounds; returns (values by key of
    the items that succeeded, failures by key: {"error", "attempts"}).

    A worker is called with a batch ``{"key": array of str}`` and returns ``{"key", "status", "error",
    "value"}`` (value: JSON text; no pickle crosses processes). Round 1 sends ``batch_size`` keys per task; later rounds send the
    items that failed (status ``failed``) or never came back (a worker that died beyond Ray's retries), one
    per task, up to ``retries`` rounds. ``already_done(key)`` tells the driver that an item that never came
    back was in fact completed (its result was written), so it is not run again. Status ``bad`` is final;
    ``fatal`` (the worker could not start, e.g. no library) raises a PixelNNError.
    """
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    attempts = dict.fromkeys(keys, 0)
    final: set[str] = set()
    pending = list(keys)
    for round_ in range(retries + 1):
        if not pending:
            break
        for k in pending:
            attempts[k] += 1
        # round 1: batches of batch_size, but at least one per worker (on the CPU a batch is no faster than
        # its inputs one by one, and gives the same bits: pipeline.batch(exact=True)); retries: one by one
        size = min(num_workers, len(pending))
        bs = max(1, min(batch_size, math.ceil(len(pending) / size))) if round_ == 0 else 1
        # a task that fails for good (its worker died `retries` + 1 times) drops only its own block, whose items
        # then never come back and are retried here, one per task: never the whole dataset (max_errored_blocks)
        ctx = ray.data.DataContext.get_current()
        saved = ctx.max_errored_blocks
        ctx.max_errored_blocks = -1
        try:
            ds = ray.data.from_items([{"key": k} for k in pending],
                                     override_num_blocks=max(1, math.ceil(len(pending) / bs)))
            # a dead actor restarts (Ray Data's default) and its task is retried `retries` times (not forever:
            # an input that kills its worker every time must end up failed). Ray 2.60 takes these only as the
            # deprecated **ray_remote_args. One task in flight per actor: none waits on an actor that a
            # crashing input keeps restarting, so only that input's task pays.
            remote = {"max_restarts": -1, "max_task_retries": retries}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
                ds = ds.map_batches(worker_cls, fn_constructor_kwargs=worker_kwargs, batch_size=bs,
                                    batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
                                    num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None, **remote)
        finally:
            ctx.max_errored_blocks = saved
        seen: set[str] = set()
        dropped = _DroppedBlocks()
        lost = "the worker was lost"
        try:
            for row in dropped.rows(ds):
                key, status, error = str(row["key"]), str(row["status"]), str(row["error"])
                seen.add(key)
                if status == FATAL:
                    raise PixelNNError(error)
                if status == OK:
                    values[key] = json.loads(row["value"])
                    errors.pop(key, None)
                else:
                    errors[key] = error
                    if status == BAD:
                        final.add(key)
                if on_result is not None:
                    on_result(key, status, error, values.get(key))
        except PixelNNError:
            raise
        except Exception as e:  # the dataset itself failed: retry what did not come back
            lost = one_line(e)
            log.warning("round %d of the Ray job stopped (%s); %d items did not come back",
                        round_ + 1, lost, len(set(pending) - seen))
        if dropped.errors:
            lost = f"its task failed {retries + 1} times (last: {dropped.errors[-1]})"
        for k in pending:
            if k not in seen and k not in values:
                if already_done is not None and already_done(k):
                    values[k] = None
                    errors.pop(k, None)
                    if on_result is not None:
                        on_result(k, OK, "", None)
                else:
                    errors[k] = lost
        pending = [k for k in pending if k not in values and k not in final]
        if pending and round_ < retries:
            log.info("retrying %d failed items (round %d of %d)", len(pending), round_ + 2, retries + 1)
    failures = {k: {"error": errors.get(k, "unknown error"), "attempts": attempts[k]}
                for k in keys if k not in values}
    return values, failures


# ---------------------------------------------------------------------------------------------- library builds
class BlockWorker:
    """A Ray Data actor for library builds: ``write_block(plan, plan.blocks[i])`` for each block index ``i``
    (the model is loaded once per process by ``write_block`` itself)."""

    def __init__(self, plan: Any, write_block: Callable[[Any, Any], Any], threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.plan, self.write_block = plan, write_block

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["key"]]
        rows = []
        for k in keys:
            try:
                rows.append((OK, "", json.dumps(self.write_block(self.plan, self.plan.blocks[int(k)]))))
            except Exception as e:  # a block error may be transient (storage): retried
                rows.append((FAILED, one_line(e), json.dumps(None)))
        return {"key": np.array(keys, dtype=object), "status": np.array([r[0] for r in rows], dtype=object),
                "error": np.array([r[1] for r in rows], dtype=object), "value": np.array([r[2] for r in rows], dtype=object)}


def build_library(plan: Any, engine: str = "local", address: str | None = None, num_workers: int | None = None, *,
                  cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, retries: int = DEFAULT_RETRIES,
                  progress: bool = True, write_block: Callable[[Any, Any], Any] | None = None,
                  commit_build: Callable[[Any, list], Any] | None = None,
                  written_block: Callable[[Any, Any], Any] | None = None) -> Any:
    """Write every block of ``plan`` (``zarr_store.plan_build``) with ``write_block`` -- in order here, or over
    a Ray actor pool -- then ``commit_build(plan, infos)`` once, with the infos in block order.

    A block that fails is retried ``retries`` times; if some still fail, nothing is committed and a
    one-line PixelNNError names them (the written blocks stay: ``write_block`` is idempotent, so a re-run
    resumes). ``written_block(plan, block)`` returns the info of a block already written by an interrupted
    run (else None): those are counted as done and not sent to a worker. ``write_block`` / ``commit_build``
    / ``written_block`` default to :mod:`pixelnn.zarr_store`'s (tests inject fakes; a fake ``write_block``
    alone gets no ``written_block``).
    """
    from tqdm.auto import tqdm

    check_engine_options(engine, address, num_workers, cpus_per_worker, gpus_per_worker, retries)
    if write_block is None or commit_build is None:
        from pixelnn import zarr_store

        if write_block is None and written_block is None:
            written_block = zarr_store.written_block
        write_block = write_block or zarr_store.write_block
        commit_build = commit_build or zarr_store.commit_build
    blocks = list(plan.blocks)
    infos: dict[int, Any] = {}
    if written_block is not None:  # a resumed build: what is already written is done
        for i, block in enumerate(blocks):
            info = written_block(plan, block)
            if info is not None:
                infos[i] = info
    todo = [i for i in range(len(blocks)) if i not in infos]
    failures: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(blocks), initial=len(infos), desc=f"build ({engine})", unit="block",
              disable=not progress, dynamic_ncols=True) as bar:
        if todo and engine == "local":
            for i in todo:
                block = blocks[i]
                for attempt in range(1, retries + 2):
                    try:
                        infos[i] = write_block(plan, block)
                        break
                    except PixelNNError as e:  # about the data: final
                        failures[i] = {"error": one_line(e), "attempts": attempt}
                        break
                    except Exception as e:
                        failures[i] = {"error": one_line(e), "attempts": attempt}
                        log.warning("block %d failed (attempt %d of %d): %s", i, attempt, retries + 1, one_line(e))
                if i in infos:
                    failures.pop(i, None)
                bar.update(1)
        elif todo:
            ray, started_ray = init_ray(address, num_cpus=(num_workers or os.cpu_count() or 1) * cpus_per_worker,
                                        num_gpus=(num_workers or 1) * gpus_per_worker or None)
            try:
                n = num_workers or _default_workers(ray, cpus_per_worker, gpus_per_worker)
                values, fails = ray_map(
                    ray, [str(i) for i in todo], BlockWorker,
                    {"plan": plan, "write_block": write_block, "threads": max(1, int(cpus_per_worker))},
                    num_workers=n, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                    retries=retries, batch_size=1,
                    on_result=lambda k, status, error, value: bar.update(status != FAILED))
            finally:
                if started_ray:
                    ray.shutdown()
            infos.update({int(k): v for k, v in values.items()})
            failures = {int(k): f for k, f in fails.items()}
    if failures:
        first = min(failures)
        raise PixelNNError(f"{len(failures)} of {len(blocks)} blocks failed after {failures[first]['attempts']} "
                           f"attempts (block {first}: {failures[first]['error']}); nothing committed, a re-run resumes")
    return commit_build(plan, [infos[i] for i in range(len(blocks))])

