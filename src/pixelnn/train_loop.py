"""The budgeted training loop shared by stage-1 training and the pix2pix baseline.

:func:`run_budgeted` owns what every resumable training run does around its optimisation step:

- it stops at ``max_steps``, at a time budget (wall or CPU clock, counted across resumes), when
  ``should_stop(step)`` says so, or at Ctrl-C (SIGINT finishes the current step first);
- it shows a tqdm bar counting seconds of the budget (or steps when there is none);
- every ``val_every`` steps it validates and saves a checkpoint, every ``sample_every`` steps it
  writes a sample grid (``samples/step_XXXXXXX.png`` and ``samples/latest.png``);
- at the end it saves a resumable checkpoint, runs ``on_finish`` and, after a Ctrl-C, re-raises
  :class:`KeyboardInterrupt`.

What a step *is* (batches, losses, optimisers, learning-rate schedule) stays with the caller, as do
the files (checkpoint format, log lines). The helpers both trainers need live here too:
:func:`start_training`, :func:`load_training_splits`, :func:`draw_batch`, :func:`dataset_record`, :func:`budget_clock`,
:func:`budget_bar`, :func:`optimizer_tensors` and :func:`load_optimizer_tensors`,
:func:`save_train_state` and :func:`load_train_state`, :func:`with_weights`, :func:`take_weights` and
:func:`check_weight_steps`, and :class:`TrainResult`.

**One checkpoint file.** The training state (``train_state.safetensors``) holds the model weights
(``weights.<model>.*`` tensors) beside the optimizer moments, the step and the RNG states, in one file
written atomically: a run killed at any point resumes from weights and optimizer state of the same
step. The weights files (``regressor.safetensors``...) are written first and stay the models' plain
exports; a resume takes the weights from the training state. A state written before it held the
weights (two files) is resumed only when the weights files record its step.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from tqdm.auto import tqdm

from pixelnn.config import check_clock
from pixelnn.data.dataset import Dataset, SplitData
from pixelnn.devices import resolve_device
from pixelnn.errors import PixelNNError
from pixelnn.io import atomic_path, check_tensors_sha256, save_image, tensors_sha256
from pixelnn.models.regressor import to_tensor

log = logging.getLogger(__name__)

#: Steps between updates of the progress bar's postfix (the running losses).
POSTFIX_EVERY = 10


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    steps: int
    seconds: float
    images_per_second: float
    metrics: dict[str, Any]


@dataclass
class LoopResult:
    """Where :func:`run_budgeted` stopped.

    Attributes
    ----------
    steps : int
        Optimisation steps done in total, across resumes.
    elapsed : float
        Seconds of the budget's clock used in total, across resumes.
    run_seconds : float
        Wall-clock seconds of this run's loop.
    images_per_second : float
        Training images per wall-clock second in this run.
    interrupted : bool
        Whether Ctrl-C (SIGINT) stopped the loop.
    """

    steps: int
    elapsed: float
    run_seconds: float
    images_per_second: float
    interrupted: bool = False


def run_budgeted(step_fn: Callable[[int, float], None], *, save: Callable[[int, float], None], max_steps: int,
                 batch_size: int, step: int = 0, budget_s: float | None = None,
                 clock: str | Callable[[], float] = "wall", elapsed_before: float = 0.0, progress: bool = True,
                 desc: str = "train", postfix: Callable[[], dict[str, Any]] | None = None,
                 val_every: int | None = None, on_validate: Callable[[int, float, float], None] | None = None,
                 sample_every: int | None = None, sample_grid: Callable[[], np.ndarray] | None = None,
                 samples_dir: Path | None = None,
                 should_stop: Callable[[int], bool] | None = None,
                 on_finish: Callable[[LoopResult], None] | None = None) -> LoopResult:
    """Run optimisation steps until a step or time budget is spent, checkpointing on the way.

    Each iteration checks the budgets, calls ``step_fn(step, progress)``, counts the step, then
    (every ``val_every`` steps) calls ``on_validate`` and ``save``, and (every ``sample_every``
    steps) writes ``sample_grid()`` into ``samples_dir`` (:func:`save_samples`). After the loop:
    ``save``, then ``on_finish``, then KeyboardInterrupt if Ctrl-C stopped it.

    Parameters
    ----------
    step_fn : callable
        ``step_fn(step, progress)``: one optimisation step. ``step`` is the number of steps done
        before this one; ``progress`` in [0, 1] is the fraction of the budget used,
        ``max(step / max_steps, elapsed / budget_s)`` (for learning-rate schedules).
    save : callable
        ``save(step, elapsed)``: write a resumable checkpoint (``elapsed`` in budget seconds).
    max_steps : int
        Stop when ``step`` reaches this (a total across resumes).
    batch_size : int
        Images per step (for the throughput).
    step : int
        Steps already done (resuming).
    budget_s : float, optional
        Time budget in seconds of ``clock``, counted across resumes; None or 0: steps only.
    clock : {"wall", "cpu"} or callable
        What the budget counts (see :func:`budget_clock`), or a function returning seconds.
    elapsed_before : float
        Budget seconds used by earlier runs (resuming).
    progress : bool
        Show the tqdm bar.
    desc : str
        The bar's label.
    postfix : callable, optional
        ``postfix() -> dict`` shown on the bar (with the step) every :data:`POSTFIX_EVERY` steps.
    val_every, on_validate : int and callable, optional
        ``on_validate(step, elapsed, images_per_second)`` every ``val_every`` steps, followed by ``save``.
    sample_every, sample_grid, samples_dir : int, callable and path, optional
        Every ``sample_every`` steps (after any validation of that step), ``sample_grid()`` gives an
        (H, W, 3) uint8 image, written as ``samples_dir/step_XXXXXXX.png`` and ``samples_dir/latest.png``
        (``samples_dir`` is required with ``sample_grid``).
    should_stop : callable, optional
        ``should_stop(step) -> bool``, checked before every step (after the budgets): stop early.
    on_finish : callable, optional
        ``on_finish(result)`` after the final save, also after Ctrl-C (final evaluation, metrics).

    Returns
    -------
    LoopResult

    Raises
    ------
    KeyboardInterrupt
        After the final save and ``on_finish`` when Ctrl-C stopped the loop.
    """
    if sample_grid is not None and samples_dir is None:
        raise ValueError("run_budgeted: sample_grid needs a samples_dir")
    with sigint_flag() as interrupted:
        t_start = time.perf_counter()
        clock_fn = budget_clock(clock) if isinstance(clock, str) else clock
        c_start = clock_fn()
        bar = budget_bar(budget_s, max_steps, elapsed_before, step, progress, desc=desc)
        last_bar = elapsed_before if budget_s else step
        images_this_run = 0
        try:
            while True:
                elapsed = elapsed_before + clock_fn() - c_start
                if (step >= max_steps or (budget_s and elapsed >= budget_s) or interrupted.is_set()
                        or (should_stop is not None and should_stop(step))):
                    break
                frac = step / max_steps
                if budget_s:
                    frac = max(frac, elapsed / budget_s)
                step_fn(step, frac)
                step += 1
                images_this_run += batch_size
                now = elapsed_before + clock_fn() - c_start
                bar.update(int(now) - int(last_bar) if budget_s else 1)
                last_bar = now if budget_s else step
                if postfix is not None and step % POSTFIX_EVERY == 0:
                    bar.set_postfix(step=step, **postfix())
                if val_every and step % val_every == 0:
                    if on_validate is not None:
                        on_validate(step, now, images_this_run / max(time.perf_counter() - t_start, 1e-9))
                    save(step, now)
                if sample_every and sample_grid is not None and step % sample_every == 0:
                    save_samples(samples_dir, step, sample_grid())
        finally:
            bar.close()
    run_seconds = time.perf_counter() - t_start
    result = LoopResult(steps=step, elapsed=elapsed_before + clock_fn() - c_start, run_seconds=run_seconds,
                        images_per_second=images_this_run / max(run_seconds, 1e-9),
                        interrupted=interrupted.is_set())
    if result.interrupted:
        log.warning("interrupted at step %d: saving a resumable checkpoint", step)
    save(result.steps, result.elapsed)
    if on_finish is not None:
        on_finish(result)
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def check_finite_loss(loss: float, step: int, lr: float) -> None:
    """Stop a diverged training: a one-line PixelNNError when the loss of a step is NaN or infinite.

    Raised before the step is saved (the loop's checkpoints follow the step), so the last checkpoint stays
    the last finite one. A NaN or infinity stays in the running mean of the loss, so checking that mean
    after each step catches it without another device sync.
    """
    if not math.isfinite(loss):
        raise PixelNNError(f"training diverged: the loss is {loss} at step {step + 1} (learning rate {lr:g}); "
                           f"resume from the last checkpoint with a lower learning rate, or restart")


def save_samples(samples_dir: Path, step: int, grid: np.ndarray) -> None:
    """Write a sample grid (H, W, 3) uint8 as ``step_XXXXXXX.png`` and ``latest.png`` in ``samples_dir``."""
    save_image(Path(samples_dir) / f"step_{step:07d}.png", grid)
    save_image(Path(samples_dir) / "latest.png", grid)


@contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) inside the block, instead of KeyboardInterrupt.

    Only in the main thread (elsewhere signals cannot be caught: the event is never set); the
    previous handler comes back on exit.
    """
    flag = threading.Event()
    old_handler = signal.signal(signal.SIGINT, lambda signum, frame: flag.set()) if in_main_thread() else None
    try:
        yield flag
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


def in_main_thread() -> bool:
    """Whether this is the interpreter's main thread (the only one that may install signal handlers)."""
    return threading.current_thread() is threading.main_thread()


def start_training(data_dir: str | Path, device: str | torch.device | None,
                   num_threads: int | None) -> tuple[torch.device, Dataset, SplitData, SplitData]:
    """What every training run does first: resolve the device (a PixelNNError before anything is read
    or written when it is unavailable), load the splits (:func:`load_training_splits`) and set torch's
    CPU threads (when ``num_threads`` is given).

    Returns
    -------
    device : torch.device
    dataset : Dataset
    train_split, val_split : SplitData
    """
    target = resolve_device(device)
    ds, train_split, val_split = load_training_splits(data_dir)
    if num_threads:
        torch.set_num_threads(num_threads)
    return target, ds, train_split, val_split


def load_training_splits(data_dir: str | Path) -> tuple[Dataset, SplitData, SplitData]:
    """A prepared dataset's train and val splits in memory (val falls back to the first 256 train pairs)."""
    ds = Dataset(data_dir)
    train_split, val_split = ds.split("train", mmap=False), ds.split("val", mmap=False)
    if len(train_split) == 0:
        raise PixelNNError(f"{data_dir} has no training images")
    if len(val_split) == 0:
        log.warning("%s has no val split; validating on the first training images", data_dir)
        val_split = SplitData(train_split.photos[:256], train_split.inputs[:256], train_split.records[:256])
    return ds, train_split, val_split


#: An encoded normal map's background (uint8 128 in every channel) as :func:`to_tensor` gives it.
_NORMALS_BACKGROUND = 128 / 127.5 - 1.0


def mirror_inputs(x: torch.Tensor, normals: bool = False) -> torch.Tensor:
    """Mirror inputs (B, C, s, s) in [-1, 1] left to right.

    ``normals``: the inputs are normal maps (RGB = (n + 1) / 2, x to the right): a mirrored surface
    turns the other way, so the x channel is negated too, except on the background (128 in every
    channel, the zero vector, kept as it is).
    """
    x = x.flip(-1)
    if normals and x.shape[1] == 3:
        background = ((x - _NORMALS_BACKGROUND).abs() < 1e-3).all(dim=1)  # (B, s, s); levels are 2 / 255 apart
        x[:, 0] = torch.where(background, x[:, 0], -x[:, 0])
    return x


def draw_batch(split: SplitData, batch_size: int, rng: np.random.Generator, flip: bool = True,
               device: torch.device | str = "cpu", normals: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A random training batch: ``batch_size`` pairs drawn with replacement, half of them mirrored.

    ``rng`` draws the indices, then (with ``flip``) one mirror coin per pair, in that order (resumed
    runs depend on it). The mirroring happens on the CPU, then the batch moves to ``device``.
    ``normals``: the inputs are normal maps, mirrored with :func:`mirror_inputs` (x component negated).

    Returns
    -------
    x : Tensor, (B, C, s, s)
        Inputs in [-1, 1].
    y : Tensor, (B, 3, S, S)
        Photos in [-1, 1].
    """
    idx = rng.integers(0, len(split), size=batch_size)
    x, y = to_tensor(split.inputs[idx]), to_tensor(split.photos[idx])  # (B, C, s, s), (B, 3, S, S)
    if flip:
        mirror = torch.from_numpy(rng.random(batch_size) < 0.5)
        x[mirror], y[mirror] = mirror_inputs(x[mirror], normals), y[mirror].flip(-1)
    return x.to(device), y.to(device)


def dataset_record(data_dir: str | Path, ds: Dataset) -> dict[str, Any]:
    """What a model's ``config.json`` says about the dataset it was trained on (path, counts, source, label keys)."""
    return {"path": str(Path(data_dir).resolve()), "counts": ds.manifest.get("counts"),
            "source": ds.manifest.get("source"), "label_keys": ds.manifest.get("label_keys", [])}


def budget_clock(clock: str) -> Callable[[], float]:
    """The timer a training budget counts: ``time.perf_counter`` ("wall") or ``time.process_time`` ("cpu")."""
    check_clock(clock)
    return time.process_time if clock == "cpu" else time.perf_counter


def budget_bar(budget_s: float | None, max_steps: int, elapsed_before: float, step: int, progress: bool,
               desc: str = "train") -> tqdm:
    """A tqdm bar counting seconds of a time budget (or steps when there is none), resumed where it stopped."""
    return tqdm(total=int(budget_s) if budget_s else max_steps, initial=int(elapsed_before) if budget_s else step,
                unit="s" if budget_s else "step", disable=not progress, desc=desc, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]" if budget_s else None)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "") -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as flat CPU tensors ``{prefix}{param_index}.{key}`` (for safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    for i, state in opt.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"{prefix}{i}.{k}"] = torch.as_tensor(v).detach().cpu().clone().contiguous()
    return tensors


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Restore the state written by :func:`optimizer_tensors` (keys without ``prefix``, and model weights
    (:data:`WEIGHTS_PREFIX`), are ignored).

    The optimizer moves the moments to its parameters' device.
    """
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if not key.startswith(prefix) or key.startswith(WEIGHTS_PREFIX):
            continue
        i, _, k = key[len(prefix):].partition(".")
        if not i.isdigit() or not k:
            continue
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


#: Prefix of the model weights inside a training state: ``weights.<model name>.<tensor name>``.
WEIGHTS_PREFIX = "weights."


def with_weights(tensors: dict[str, torch.Tensor], models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``tensors`` plus every model's weights under ``weights.<name>.`` (CPU copies), for one checkpoint file."""
    out = dict(tensors)
    for name, model in models.items():
        for k, v in model.state_dict().items():
            out[f"{WEIGHTS_PREFIX}{name}.{k}"] = v.detach().cpu().clone().contiguous()
    return out


def take_weights(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor] | None:
    """The weights of model ``name`` in a training state's tensors (:func:`with_weights`), or None when the
    state holds none (written before checkpoints held the weights)."""
    prefix = f"{WEIGHTS_PREFIX}{name}."
    found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return found or None


def weights_step(path: Path) -> int | None:
    """The training step a weights file's metadata records (``step``), or None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
        return int(step) if step is not None else None
    except Exception:
        return None


def check_weight_steps(state_path: Path, step: int, weights: list[Path]) -> None:
    """For a training state without weights (two separate files, written by an older PixelNN): refuse to
    resume when a weights file records another step than the state (a save killed between the files)."""
    for w in weights:
        ws = weights_step(w)
        if ws is not None and ws != step:
            raise PixelNNError(f"{w} is at step {ws} but {state_path} at step {step}: a checkpoint of an older "
                               f"PixelNN was interrupted between its files, so they do not resume together; pass "
                               f"resume=False (--restart) to train from scratch")


def save_train_state(path: Path, tensors: dict[str, torch.Tensor], *, step: int, elapsed: float, images_seen: int,
                     rng: np.random.Generator) -> None:
    """Write a resumable training state: CPU ``tensors`` (optimizer moments, ...) and, in the metadata,
    the step, budget seconds used, images seen and the numpy RNG state (atomic)."""
    meta = {"step": str(step), "elapsed": repr(elapsed), "images_seen": str(images_seen),
            "rng": json.dumps(rng.bit_generator.state), "tensors_sha256": tensors_sha256(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_train_state(path: Path, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], int, float, int]:
    """Read :func:`save_train_state`'s file and restore ``rng`` from it.

    Returns
    -------
    tensors : dict of str to Tensor
        On the CPU.
    step : int
    elapsed : float
        Budget seconds used.
    images_seen : int
    """
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        check_tensors_sha256(tensors, meta, path, "training state")
        rng.bit_generator.state = json.loads(meta["rng"])
        return tensors, int(meta["step"]), float(meta["elapsed"]), int(meta.get("images_seen", 0))
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise PixelNNError(f"cannot read training state {path}: {msg}; "
                           "pass resume=False (--restart) to start over") from None
