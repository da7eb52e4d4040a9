"""What a training run says about itself: the lines it prints when it starts and ends, summary.json.

`describe` is the run's opening statement (model, data, loader, optimizer, the schedule's table
of stages: Tan & Le 2021, Section 4, Algorithm 1), `summarize` the dict that becomes summary.json
(what was trained, on what, how, on which hardware, and the history's digest from
`effv2_lib.report`), `write_run_report` writes it with the figures into the run directory, and
`describe_result` is the closing line. The per-epoch line and the figures themselves are
`effv2_lib.report`'s, so that a notebook reading an old run directory shows what the run printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import torch

from .checkpoint import CONFUSION_FILE, CURVES_FILE, HISTORY_FILE, SUMMARY_FILE
from .config import TrainConfig
from .distributed import Ranks
from .report import digest_history, format_duration
from .run_directory import RunDirectory
from .run_setup import TrainingSetup
from .runtime import count_parameters, hardware

__all__ = ["describe", "summarize", "write_run_report", "describe_result"]


def describe(config: TrainConfig, setup: TrainingSetup, ranks: Ranks, device: torch.device) -> str:
    """The run as it starts: model, data, loader, optimizer and speed settings, the stages, where it writes."""
    cfg, s = config, setup
    loader = (" (crop, flip, resize, RandAugment, Mixup/CutMix batched on the device)"
              if s.loader_kind == "device"
              else " (DataLoader, per-sample crop, flip, resize, RandAugment; Mixup/CutMix per batch)")
    lines = [
        f"model {s.model.name} ({count_parameters(s.model) / 1e6:.2f}M parameters), "
        f"{s.data.num_classes} classes, on {device}"
        + (f" x {ranks.world_size} processes" if ranks.enabled else ""),
        f"data: {len(s.data.train)} training / {len(s.data.test)} test images from {s.data.source}"
        + (" (THE BUNDLED SAMPLE)" if s.data.is_sample else ""),
        f"loader: {s.loader_kind}{loader}; batch {cfg.batch_size}, {s.steps_per_epoch} steps per epoch; "
        f"eval at {s.eval_size} px",
        f"optimizer {cfg.optimizer} lr {s.optimizer.defaults['lr']:.3g} wd "
        f"{s.optimizer.defaults['weight_decay']:g}, {cfg.lr_schedule} after {s.lr_factor.warmup_steps} "
        f"warm-up steps, label smoothing {cfg.label_smoothing}" + (f", EMA {cfg.ema_decay}" if cfg.ema else "")
        + f"; bf16 {s.bf16}, channels_last {s.channels_last}, compile {cfg.compile}",
        s.schedule.table(),
    ]
    if cfg.out is not None:
        where = f" (checkpoints in {cfg.checkpoint_dir})" if cfg.checkpoint_dir else ""
        lines.append(f"writing to {cfg.out}{where}")
    return "\n".join(lines)


def summarize(status: str, config: TrainConfig, setup: TrainingSetup, ranks: Ranks, device: torch.device, *,
              history: list[dict[str, Any]], command: str | None, setup_time: float,
              compile_error: str | None) -> dict[str, Any]:
    """summary.json as far as the epochs tell it; a finished run adds the final test (the trainer's `finish`)."""
    cfg, s = config, setup
    return {
        "status": status,
        "command": command,
        "model_name": cfg.model,
        "model": s.model.name,
        "params": count_parameters(s.model),
        "dataset": cfg.dataset,
        "data": {"source": s.data.source, "is_sample": s.data.is_sample,
                 "train_images": len(s.data.train), "test_images": len(s.data.test),
                 "evaluated_on": s.data.evaluated_on},
        "schedule": s.schedule.to_dict(),
        "eval_size": s.eval_size,
        **digest_history(history),
        "setup_time_s": setup_time,
        "compile_error": compile_error,
        "optimizer": {"name": cfg.optimizer, "lr": s.optimizer.defaults["lr"],
                      "weight_decay": s.optimizer.defaults["weight_decay"], "momentum": cfg.momentum,
                      "lr_schedule": cfg.lr_schedule, "warmup_steps": s.lr_factor.warmup_steps,
                      "steps_per_epoch": s.steps_per_epoch, "batch_size": cfg.batch_size,
                      "label_smoothing": cfg.label_smoothing, "ema": cfg.ema,
                      "ema_decay": cfg.ema_decay if cfg.ema else None},
        "speed": {"loader": s.loader_kind, "bf16": s.bf16, "channels_last": s.channels_last,
                  "compile": cfg.compile, "compile_mode": cfg.compile_mode if cfg.compile else None,
                  "world_size": ranks.world_size},
        "hardware": {**hardware(device), "world_size": ranks.world_size},
        "config": cfg.to_dict(),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_run_report(run_dir: RunDirectory, summary: dict[str, Any], history: list[dict[str, Any]],
                     config: TrainConfig, setup: TrainingSetup, weights: Mapping[str, Any] | None) -> None:
    """summary.json, the figures (titled with model, data and schedule) and the weights if given."""
    s = setup
    data = "the CIFAR-10 sample" if s.data.is_sample else config.dataset
    run_dir.finish(summary, history, classes=s.data.classes, weights=weights,
                   title=f"{s.model.name} on {data} ({len(s.data.train)} training images), "
                         f"schedule {s.schedule.name or 'custom'}")


def describe_result(summary: dict[str, Any], out: str | None) -> str:
    """The finished run in one line: final and best test accuracy, epochs, times, and where the files are."""
    text = (f"done: test accuracy {summary['final_test_acc']:.4f} (best {summary['best_test_acc']:.4f} at epoch "
            f"{summary['best_epoch']}) after {summary['epochs_done']} epochs, training "
            f"{format_duration(summary['train_time_s'])}, wall {format_duration(summary['wall_time_s'])}")
    if out is not None:
        text += f"\nresults in {out}: {SUMMARY_FILE}, {HISTORY_FILE}, {CURVES_FILE}, {CONFUSION_FILE}"
    return text
