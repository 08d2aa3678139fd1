"""The budgeted training loop shared by stage 1 and pix2pix: budgets, hooks, the final save, Ctrl-C."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnn.errors import PixelNNError
from pixelnn.train_loop import (LoopResult, load_optimizer_tensors, load_train_state, optimizer_tensors, run_budgeted,
                                save_train_state)


class Recorder:
    """Hooks for :func:`run_budgeted` that record what was called, in order."""

    def __init__(self, clock: dict[str, float] | None = None, seconds_per_step: float = 0.0):
        self.events: list[tuple] = []
        self.clock = clock
        self.seconds_per_step = seconds_per_step

    def step(self, step: int, progress: float) -> None:
        self.events.append(("step", step, progress))
        if self.clock is not None:
            self.clock["t"] += self.seconds_per_step

    def save(self, step: int, elapsed: float) -> None:
        self.events.append(("save", step, elapsed))

    def validate(self, step: int, elapsed: float, images_per_second: float) -> None:
        assert images_per_second > 0
        self.events.append(("validate", step))

    def sample_grid(self) -> np.ndarray:
        self.events.append(("sample", self.kinds("step")[-1][1] + 1))
        return np.full((4, 6, 3), len(self.events), np.uint8)

    def finish(self, result: LoopResult) -> None:
        self.events.append(("finish", result.steps))

    def kinds(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


def run(rec: Recorder, **kw) -> LoopResult:
    kw.setdefault("max_steps", 5)
    kw.setdefault("batch_size", 4)
    if "samples_dir" in kw:
        kw["sample_grid"] = rec.sample_grid
    return run_budgeted(rec.step, save=rec.save, on_validate=rec.validate, on_finish=rec.finish, progress=False,
                        **kw)


def test_step_budget_hooks_and_final_save(tmp_path):
    rec = Recorder()
    result = run(rec, max_steps=6, val_every=2, sample_every=3, samples_dir=tmp_path)
    assert result.steps == 6 and not result.interrupted
    assert [e[1] for e in rec.kinds("step")] == [0, 1, 2, 3, 4, 5]
    assert [e[2] for e in rec.kinds("step")] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
    names = [e[:2] for e in rec.events if e[0] != "step"]
    assert names == [("validate", 2), ("save", 2), ("sample", 3), ("validate", 4), ("save", 4),
                     ("validate", 6), ("save", 6), ("sample", 6),  # validation before the sample of a step
                     ("save", 6), ("finish", 6)]  # the final save, then on_finish
    assert result.images_per_second > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.png", "step_0000003.png", "step_0000006.png"]
    latest, last = (np.asarray(Image.open(tmp_path / name)) for name in ("latest.png", "step_0000006.png"))
    assert latest.shape == (4, 6, 3) and np.array_equal(latest, last)


def test_resumed_step_counts_in_total_and_zero_steps_still_saves():
    rec = Recorder()
    assert run(rec, max_steps=5, step=3).steps == 5
    assert [e[1] for e in rec.kinds("step")] == [3, 4]
    rec = Recorder()
    assert run(rec, max_steps=5, step=5).steps == 5
    assert rec.events == [("save", 5, pytest.approx(0.0, abs=1.0)), ("finish", 5)]


def test_time_budget_with_a_fake_clock_counts_across_resumes():
    clock = {"t": 100.0}
    rec = Recorder(clock, seconds_per_step=1.5)
    result = run(rec, max_steps=1000, budget_s=5.0, clock=lambda: clock["t"])
    # Checks at 0, 1.5, 3, 4.5 pass; at 6 the budget is spent.
    assert result.steps == 4 and result.elapsed == pytest.approx(6.0)
    # The schedule sees the larger of the step and time fractions.
    assert [e[2] for e in rec.kinds("step")] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert rec.kinds("save") == [("save", 4, pytest.approx(6.0))]
    # Resuming with 3 s already used leaves room for two more steps.
    rec = Recorder(clock, seconds_per_step=1.5)
    result = run(rec, max_steps=1000, step=4, budget_s=5.0, elapsed_before=3.0, clock=lambda: clock["t"])
    assert result.steps == 6 and result.elapsed == pytest.approx(6.0)


def test_should_stop_is_asked_before_every_step():
    asked: list[int] = []

    def should_stop(step: int) -> bool:
        asked.append(step)
        return step >= 3

    rec = Recorder()
    result = run(rec, max_steps=10, should_stop=should_stop)
    assert result.steps == 3 and not result.interrupted
    assert asked == [0, 1, 2, 3]
    assert rec.events[-2:] == [("save", 3, pytest.approx(0.0, abs=5.0)), ("finish", 3)]


def test_ctrl_c_finishes_the_step_saves_then_reraises():
    rec = Recorder()
    before = signal.getsignal(signal.SIGINT)

    def step_fn(step: int, progress: float) -> None:
        rec.step(step, progress)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag: this step completes

    with pytest.raises(KeyboardInterrupt):
        run_budgeted(step_fn, save=rec.save, max_steps=10, batch_size=1, progress=False, on_finish=rec.finish)
    assert [e[1] for e in rec.kinds("step")] == [0, 1, 2]
    assert [e[:2] for e in rec.events[-2:]] == [("save", 3), ("finish", 3)]  # saved before re-raising
    assert signal.getsignal(signal.SIGINT) is before


def test_an_error_in_a_step_restores_the_handler_and_skips_the_final_save():
    rec = Recorder()
    before = signal.getsignal(signal.SIGINT)

    def step_fn(step: int, progress: float) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_budgeted(step_fn, save=rec.save, max_steps=10, batch_size=1, progress=False, on_finish=rec.finish)
    assert rec.events == []
    assert signal.getsignal(signal.SIGINT) is before


def test_train_state_roundtrip_and_unreadable_file(tmp_path):
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.full((3,), 0.5)
    opt.step()
    rng = np.random.default_rng(7)
    rng.random(3)
    save_train_state(tmp_path / "s.safetensors", optimizer_tensors(opt, "g."), step=12, elapsed=3.5,
                     images_seen=48, rng=rng)
    expected = rng.random(4)

    rng2 = np.random.default_rng(0)
    tensors, step, elapsed, images_seen = load_train_state(tmp_path / "s.safetensors", rng2)
    assert (step, elapsed, images_seen) == (12, 3.5, 48)
    assert np.array_equal(rng2.random(4), expected)
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    load_optimizer_tensors(opt2, tensors, "g.")
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(PixelNNError, match="cannot read training state"):
        load_train_state(tmp_path / "bad.safetensors", rng2)
