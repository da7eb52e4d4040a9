"""What runs beside the training loop so that the loop itself can read as the method.

`effv2_lib.trainer.Trainer.train_epoch` takes steps and hands each one's loss and logits to a
`StepMeter`; everything that keeps a long run fast and safe happens here, out of the student's way:

- `DeviceTally`: the epoch's loss and accuracy summed on the device, so that the training step
  never waits for the GPU (at CIFAR sizes a GPU is bound by launches and host round trips).
- `StepMeter`: reads the tally every ``sync_every`` steps and at the epoch's end; at those reads
  (and nowhere else) the ranks vote on stopping and the first non-finite loss raises
  `NonFiniteLossError`, in one collective; it also times the epoch and draws the progress bar.
- `StopOnSignal`: Ctrl-C (SIGINT) or SIGTERM finishes the step, saves and stops; a third aborts.
- `CompiledForward`: the model's forward pass, under torch.compile when asked, with the first
  step at each new image size timed as compiling and a compiler failure falling back to eager.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .runtime import synchronize
from .schedule import Stage

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["NonFiniteLossError", "StepMeter", "StopOnSignal", "DeviceTally", "CompiledForward"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class StepMeter:
    """An epoch's bookkeeping beside the training step, kept out of its way.

    The loss and accuracy are summed on the device (`DeviceTally`); the host reads them only at
    every sync_every-th step, at the epoch's last step, and at once after a stop request when there
    is one process. At those reads (and nowhere else) the ranks vote on stopping and the first
    non-finite loss raises NonFiniteLossError (one collective for both); the progress bar shows
    loss, accuracy and images/s. It also times the epoch (with the GPU synchronized at both ends),
    less what compiling took.
    """

    def __init__(self, trainer: Trainer, epoch: int, stage: Stage, first_step: int, stop: StopOnSignal) -> None:
        self.trainer, self.epoch, self.stage, self.stop = trainer, epoch, stage, stop
        resuming = first_step > 0
        partial = trainer.start.partial
        self.tally = DeviceTally(trainer.device, partial if resuming else None)
        self.time_before = partial["train_time"] if resuming else 0.0  # earlier invocations
        trainer.start.partial = None  # the interrupted epoch's sums are taken once
        self.first_step = self.last_step = first_step
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=first_step, dynamic_ncols=True, unit="step",
                        desc=f"epoch {epoch + 1}/{trainer.schedule.total_epochs} stage {stage.index} "
                             f"{stage.image_size}px",
                        disable=not (trainer.progress and trainer.ranks.is_main))

    def __enter__(self) -> StepMeter:
        self.bar.__enter__()
        synchronize(self.trainer.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def add(self, step: int, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        self.tally.add(step, loss, logits, targets)
        self.last_step = step
        self.bar.update(1)
        if self.trainer.on_step is not None:
            self.trainer.on_step(self.epoch, step)

    def must_stop(self, step: int) -> bool:
        """Whether the run stops after `step` (never at the epoch's last step: the epoch ends)."""
        trainer, steps = self.trainer, self.trainer.steps_per_epoch
        # Under DDP the ranks must meet at the same steps, so a stop request waits for the next meeting.
        alone_stopping = self.stop.requested and not trainer.ranks.enabled
        if (step + 1) % trainer.setup.sync_every and step + 1 < steps and not alone_stopping:
            return False
        first_bad, stop_now = trainer.ranks.max(torch.stack(
            [-self.tally.first_bad, torch.tensor(int(self.stop.requested), device=trainer.device)])).tolist()
        if -first_bad != self.tally.NEVER:
            raise non_finite_error(trainer, self.epoch, -first_bad,
                                   float(self.tally.bad_loss) if trainer.ranks.is_main else None)
        so_far = self.tally.read()
        rate = so_far["seen"] * trainer.ranks.world_size / (self.time_before + time.perf_counter() - self.started)
        self.bar.set_postfix(loss=f"{so_far['loss_sum'] / so_far['seen']:.3f}",
                             acc=f"{so_far['correct'] / so_far['seen']:.3f}", img_s=f"{rate:.0f}",
                             stage=self.stage.index, refresh=False)
        return bool(stop_now) and step + 1 < steps

    def partial(self) -> dict[str, Any]:
        """The unfinished epoch's sums and training time, for a checkpoint."""
        synchronize(self.trainer.device)
        return {**self.tally.read(), "train_time": self.time_before + time.perf_counter() - self.started}

    def stats(self) -> dict[str, Any]:
        """The finished epoch: this rank's sums, the times (less compiling), and the sums over the
        ranks ("global")."""
        trainer, compile_time = self.trainer, self.trainer.forward.take_compile_time()
        synchronize(trainer.device)
        loop_time = time.perf_counter() - self.started  # this invocation's share of the epoch
        train_time = self.time_before + loop_time
        steady_time = train_time  # the time throughput is measured on: without compiling
        done = self.last_step + 1 - self.first_step
        if compile_time is not None and done > 1:
            # compile time = the compiling step's time less a usual step's (measured on the others)
            compile_time = max(0.0, compile_time - (loop_time - compile_time) / (done - 1))
            steady_time -= compile_time
        stats = {**self.tally.read(), "train_time": train_time, "steady_time": steady_time,
                 "step": self.last_step + 1, "compile_time": compile_time}
        totals = trainer.ranks.sum(torch.tensor([stats["loss_sum"], stats["correct"], stats["seen"]],
                                                dtype=self.tally.loss_sum.dtype, device=trainer.device))
        stats["global"] = totals.tolist()
        return stats


def non_finite_error(trainer: Trainer, epoch: int, step: int, value: float | None) -> NonFiniteLossError:
    """The error for a NaN or infinite loss at (epoch, step): where the run stood, the last good
    checkpoint, and what to try."""
    value = "not finite" if value is None or math.isfinite(value) else value  # finite: another rank's
    last = trainer.history[-1]["epoch"] if trainer.history else None
    checkpoint = trainer.run_dir.checkpoint
    where = (f"the last good checkpoint is {checkpoint} (after epoch {last})"
             if checkpoint is not None and last is not None else "no checkpoint was written")
    return NonFiniteLossError(
        f"training loss is {value} at epoch {epoch + 1}/{trainer.schedule.total_epochs}, step {step + 1}/"
        f"{trainer.steps_per_epoch} (learning rate {trainer.scheduler.get_last_lr()[0]:.3g}); stopping. {where}. "
        f"Try a lower --lr or a longer --warmup-epochs.")


class StopOnSignal:
    """SIGINT / SIGTERM request a clean stop (finish the step, save, exit); a third one aborts."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.count = 0
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count >= 3:
            raise KeyboardInterrupt(f"signal {signum} received 3 times: aborting without saving")
        if self.count == 1:
            self.log(f"\n{signal.Signals(signum).name} received: finishing this step, saving a checkpoint, "
                     "stopping (twice more to abort without saving)")

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class DeviceTally:
    """Loss sum, correct count and the first non-finite step, kept on the device.

    `add` queues a few tensor operations and never waits for the GPU; only `read` copies to the
    host, which the loop does every sync_every steps.
    """

    NEVER = torch.iinfo(torch.int64).max

    def __init__(self, device: torch.device, partial: dict[str, Any] | None) -> None:
        partial = partial or {}
        exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.loss_sum = torch.tensor(partial.get("loss_sum", 0.0), device=device, dtype=exact)
        self.correct = torch.tensor(partial.get("correct", 0), device=device, dtype=torch.int64)
        self.seen = int(partial.get("seen", 0))  # a Python int: batch sizes are known on the host
        self.first_bad = torch.full((), self.NEVER, device=device, dtype=torch.int64)
        self.bad_loss = torch.zeros((), device=device)

    def add(self, step: int, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        hard_targets = targets if targets.ndim == 1 else targets.argmax(1)  # Mixup: the larger partner
        self.loss_sum += loss * len(logits)
        self.correct += (logits.argmax(1) == hard_targets).sum()
        bad = (self.first_bad == self.NEVER) & ~torch.isfinite(loss)
        self.first_bad = torch.where(bad, step, self.first_bad)
        self.bad_loss = torch.where(bad, loss, self.bad_loss)
        self.seen += len(logits)

    def read(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen}


TrainStep = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class CompiledForward:
    """The model's forward pass as the training step calls it: the (DDP-wrapped) model, compiled
    when the config asks for torch.compile.

    With compile on, the first step at each new image size compiles (dynamic=False: one static
    graph per stage size; by default a second size makes dynamo switch to a shape-generic graph,
    whose kernels are slower than size-specialized ones). That step is timed, so that throughput
    is measured without it, and a compiler failure falls back to eager training instead of ending
    the run (`error` records it, for the checkpoint and summary.json).
    """

    def __init__(self, module: nn.Module, *, enabled: bool, mode: str, device: torch.device,
                 log: Callable[[str], None], error: str | None = None) -> None:
        self.eager, self.enabled, self.device, self.log, self.error = module, enabled, device, log, error
        self.module = torch.compile(module, mode=mode, dynamic=False) if enabled else module
        self.compiled_sizes: set[int] = set()
        self.compile_time: float | None = None  # the compiling step's, until the epoch's statistics take it

    def __call__(self, images: Tensor) -> Tensor:
        return self.module(images)

    def step_at(self, image_size: int, train_step: TrainStep) -> TrainStep:
        """The step to take at a stage of `image_size` px: `train_step`, or with compile on and a
        size not compiled yet, `train_step` run as the compiling step."""
        if not self.enabled or image_size in self.compiled_sizes:
            return train_step
        return lambda images, targets: self.compiling_step(train_step, images, targets)

    def compiling_step(self, train_step: TrainStep, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """`train_step` at a new image size with compile on: it compiles, timed (see
        `take_compile_time`); afterwards (the rest of the stage) it is `train_step` alone."""
        if images.shape[-1] in self.compiled_sizes:
            return train_step(images, targets)
        synchronize(self.device)
        start = time.perf_counter()
        try:
            logits, loss = train_step(images, targets)
        except Exception as exc:  # a compiler failure must not cost the run: train eagerly
            if self.module is self.eager:
                raise
            self.error = f"{type(exc).__name__}: {exc}"
            self.log(f"WARNING: torch.compile failed ({self.error[:300]}); training eagerly")
            self.module = self.eager
            logits, loss = train_step(images, targets)
        synchronize(self.device)
        self.compiled_sizes.add(images.shape[-1])
        self.compile_time = time.perf_counter() - start
        return logits, loss

    def take_compile_time(self) -> float | None:
        """The compiling step's time in this epoch (None if none compiled), once."""
        compile_time, self.compile_time = self.compile_time, None
        return compile_time
