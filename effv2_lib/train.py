"""Train a CIFAR-scale EfficientNetV2 with progressive learning: the one-call API and the command.

Tan & Le (2021), "EfficientNetV2: Smaller Models and Faster Training", Section 4, Algorithm 1:
image size, dropout, RandAugment and Mixup grow stage by stage. The pieces live in their own
modules; this one puts them behind a function and a command line:

    effv2_lib.config       TrainConfig (everything a run depends on), make train's default
    effv2_lib.trainer      the loop: stages, fast steps, checkpoints, Ctrl-C, NaN guard
    effv2_lib.optim        optimizer, warm-up + cosine / exponential learning rate, weight EMA
    effv2_lib.distributed  torchrun / DistributedDataParallel
    effv2_lib.report       per-epoch lines, the history's digest, plots

Python::

    from effv2_lib.train import TrainConfig, train
    result = train(TrainConfig(model="cifar-tiny", epochs=8, sample=True, out=None))
    result.history[-1]["test_acc"], result.summary["final_test_acc"]

Command line: ``python -m effv2_lib.train --help``; ``make train`` runs ``--auto``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ._cli import model_name, one_line_errors, output_path, schedule_file
from .checkpoint import RUN_FILE, read_run
from .config import LOADERS, SMOKE, TrainConfig, auto_config
from .data import NORMALIZATION, CifarData
from .model import MODEL_NAMES
from .optim import LR_SCHEDULES, OPTIMIZERS
from .runtime import is_quick_check
from .trainer import NonFiniteLossError, Trainer, TrainResult

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "auto_config", "train", "build_parser", "main"]


def train(config: TrainConfig, progress: bool = True, *, data: CifarData | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_step: Callable[[int, int], None] | None = None, command: str | None = None,
          resume_command: str | None = None) -> TrainResult:
    """Run the training `config` describes (see `effv2_lib.trainer` for what happens).

    Args:
        config: a TrainConfig.
        progress: show tqdm progress bars (one per epoch). The per-epoch lines and messages are
            printed either way, so a run in the background leaves a readable log.
        data: train on this CifarData instead of loading `config`'s (subsets still apply).
        on_epoch: called with each epoch's history record (e.g. to plot live in a notebook).
        on_step: called as on_step(epoch, step) (0-based) after every optimizer step.
        command: the command line, recorded in run.json and summary.json.
        resume_command: what continues the run when it stops early, if not train's --resume (an
            experiment's own command: it resumes its runs itself).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        RunDirectoryError: `config.out` holds another run (see effv2_lib.checkpoint).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    trainer = Trainer(config, data=data, progress=progress, on_epoch=on_epoch, on_step=on_step,
                      command=command if command is not None else "effv2_lib.train.train(TrainConfig(...))",
                      resume_command=resume_command)
    try:
        return trainer.run()
    finally:
        trainer.ranks.close()


# ------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.train",
        description="Train EfficientNetV2 on CIFAR with progressive learning (Tan & Le 2021, Algorithm 1): "
                    "image size, dropout, RandAugment and Mixup grow stage by stage. Writes run.json, "
                    "checkpoint.pt (every epoch), history.json, summary.json and plots to --out.",
        epilog="examples:\n"
               "  python -m effv2_lib.train --auto                      # what `make train` runs\n"
               "  python -m effv2_lib.train --model cifar --preset cifar10 --epochs 40 --data DIR --out runs/prog\n"
               "  python -m effv2_lib.train --preset cifar10 --fixed-size 32 --data DIR --out runs/fixed\n"
               "  python -m effv2_lib.train --out runs/prog --resume     # continue after Ctrl-C\n"
               "  torchrun --nproc_per_node=2 -m effv2_lib.train --data DIR --out runs/ddp\n"
               "Ctrl-C saves a checkpoint and stops (three times: abort without saving).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS)  # only options given on the command line override

    def default(name: str) -> str:
        return f" (default: {getattr(d, name)})"

    g = parser.add_argument_group("run")
    g.add_argument("--auto", action="store_true",
                   help="sensible defaults for this machine: on a GPU the full CIFAR-10 progressive run, "
                        "on a CPU a ~5 minute classroom run; options given as well override them")
    g.add_argument("--smoke", action="store_true",
                   help="pipeline check in seconds on 10 images per class: one epoch per stage, or --epochs "
                        "if given (also EFFV2_QUICK=1)")
    g.add_argument("--out", type=output_path,
                   help="run directory for checkpoint, history, summary, plots (default: runs/<model>-<time>)")
    g.add_argument("--checkpoint-dir", dest="checkpoint_dir", type=output_path,
                   help="keep checkpoint.pt here instead of in --out")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                                                         "(its settings are reused; given ones must agree)")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--stop-after", dest="stop_after", type=int, metavar="N",
                   help="stop (resumably) once N epochs are done")
    g.add_argument("--save-weights", dest="save_weights", action="store_true",
                   help="also write the final weights as model.pt (shards of <= 15 MiB) for evaluate.py")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")

    g = parser.add_argument_group("model and schedule")
    g.add_argument("--model", type=model_name, metavar="NAME",
                   help=f"network: {', '.join(MODEL_NAMES)}, or arch:CODES, a network of the search space "
                        f"(effv2_lib.search)" + default("model"))
    g.add_argument("--dataset", choices=tuple(NORMALIZATION), help="data set" + default("dataset"))
    g.add_argument("--preset", help="progressive schedule preset (effv2_lib.schedule.PRESETS: cifar10, cifar100, "
                                    "cifar10-fixed, paper-s, ...)" + default("preset"))
    g.add_argument("--epochs", type=int, help="total epochs N (default: the preset's; cifar10: 40)")
    g.add_argument("--schedule", type=schedule_file, metavar="FILE",
                   help="the schedule as JSON (ProgressiveSchedule.to_json(), e.g. from the schedule explorer) "
                        "instead of --preset")
    g.add_argument("--fixed-size", dest="fixed_size", type=int, metavar="PX",
                   help="no progressive learning: train every epoch at PX with the final stage's regularization")
    g.add_argument("--eval-size", dest="eval_size", type=int, metavar="PX",
                   help="test image size (default: the model's, 32)")

    g = parser.add_argument_group("data")
    g.add_argument("--data", dest="data_dir", metavar="DIR",
                   help="directory with train.npz/test.npz or train/<class>/, test/<class>/ (default: $EFFV2_DATA, "
                        "then torchvision's copy in data/, then the bundled sample, announced)")
    g.add_argument("--download", action="store_true", help="download the data set with torchvision into data/")
    g.add_argument("--sample", action="store_true", help="train on the bundled 2,500-image CIFAR-10 sample")
    g.add_argument("--full-data-only", dest="full_data_only", action="store_true",
                   help="fail instead of falling back to the sample")
    g.add_argument("--subset-per-class", dest="subset_per_class", type=int, metavar="K",
                   help="train on K images per class")
    g.add_argument("--test-subset-per-class", dest="test_subset_per_class", type=int, metavar="K",
                   help="test on K images per class")
    g.add_argument("--holdout-per-class", dest="holdout_per_class", type=int, metavar="K",
                   help="hold K training images per class out of training and evaluate on them instead of the "
                        "test set (500: 5,000 images), to choose a recipe without looking at the test set")
    g.add_argument("--loader", choices=LOADERS,
                   help="device (auto): the data set on the device, crop/flip/resize/RandAugment/Mixup batched "
                        "there; cpu: a DataLoader with per-sample transforms (the classic path, slower)")
    g.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers of --loader cpu "
                                                                   "(default: 0 on CPU, up to 8 with CUDA)")

    g = parser.add_argument_group("optimization")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size" + default("batch_size"))
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="SGD with Nesterov momentum, or RMSprop as in the paper"
                   + default("optimizer"))
    g.add_argument("--lr", type=float, help="peak learning rate (default: 0.1 x batch/128 for SGD, 0.016 x batch/256 "
                                            "for RMSprop)")
    g.add_argument("--momentum", type=float, help="momentum" + default("momentum"))
    g.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help="on conv/linear weights only (default: 5e-4 SGD, 1e-5 RMSprop)")
    g.add_argument("--lr-schedule", dest="lr_schedule", choices=LR_SCHEDULES,
                   help="after warm-up: cosine to 0, or x0.97 every 2.4 epochs (paper)" + default("lr_schedule"))
    g.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                   help="linear warm-up, at most a fifth of the run" + default("warmup_epochs")
                   + "; automl: 5 epochs")
    g.add_argument("--label-smoothing", dest="label_smoothing", type=float,
                   help="cross-entropy label smoothing" + default("label_smoothing"))
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, help="exponential moving average of the weights "
                   "(evaluated and reported instead of the raw weights)")
    g.add_argument("--ema-decay", dest="ema_decay", type=float, help="per step" + default("ema_decay")
                   + "; automl: 0.9999, for ImageNet's many more steps per run")
    g.add_argument("--bn-reestimate", dest="bn_reestimate", action=argparse.BooleanOptionalAction,
                   help="re-estimate BatchNorm statistics at the eval size before the final evaluation "
                        "(default: only when the last stage trained at another size than the eval size)")
    g.add_argument("--bn-batches", dest="bn_batches", type=int,
                   help="training batches for the re-estimation" + default("bn_batches"))
    g.add_argument("--seed", type=int, help="seed of the initial weights, data order and augmentation"
                   + default("seed"))

    g = parser.add_argument_group("speed")
    g.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: CUDA if available)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on for CUDA)")
    g.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default: on for CUDA and CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (one compilation per image size)")
    g.add_argument("--compile-mode", dest="compile_mode", help="torch.compile mode" + default("compile_mode"))
    g.add_argument("--sync-every", dest="sync_every", type=int, metavar="STEPS",
                   help="read the loss back every STEPS steps (default: 50 on CUDA, 1 elsewhere)")
    return parser


# Options that steer one invocation only: a resume does not inherit them from run.json (a run
# stopped with --stop-after 10 trains on when resumed; give them again to use them again).
ONE_INVOCATION = ("stop_after", "device", "resume", "overwrite")


def _quick_check_note(given: dict[str, Any], why: str) -> str | None:
    """One line naming the options the quick check replaces with its own values (None: none given)."""
    replaced = [(name, value) for name, value in given.items() if name in SMOKE and value != SMOKE[name]]
    if not replaced:
        return None

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    own = ", ".join(f"{flag(name)} {SMOKE[name]}" for name, _ in replaced)
    yours = ", ".join(f"{flag(name)} {value}" for name, value in replaced)
    return (f"NOTE: the quick check ({why}) trains with its own {own} instead of the {yours} given (a pipeline "
            f"check on {SMOKE['subset_per_class']} images per class; without {why} your values are used)")


def _config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool, str | None]:
    given = vars(args)
    if "schedule" in given and "preset" in given:
        raise ValueError("--schedule and --preset both name the schedule; give one of them")
    if given.get("sample") and ("data_dir" in given or given.get("download")):
        raise ValueError("--sample trains on the bundled sample; do not also give --data or --download")
    progress = given.pop("progress", True)
    auto = given.pop("auto", False)
    asked_smoke = given.pop("smoke", False)
    smoke = asked_smoke or is_quick_check()
    notes = [_quick_check_note(given, "--smoke" if asked_smoke else "EFFV2_QUICK=1")] if smoke else []
    if given.get("resume"):
        if "out" not in given:
            raise ValueError("--resume needs --out (the run directory to continue)")
        run_file = Path(given["out"]) / RUN_FILE
        base = read_run(run_file)["config"] if run_file.is_file() else {}
        for name in ONE_INVOCATION:  # they steered the invocation that started the run, not this one
            base.pop(name, None)
    elif auto:
        auto_cfg, note = auto_config(given.get("device"), given.get("data_dir"))
        notes.insert(0, note)
        base = auto_cfg.to_dict()
    else:
        base = {}
    options = {**base, **given}
    if smoke:
        options["smoke"] = True
    if "out" not in options:
        options["out"] = f"runs/{options.get('model', 'cifar')}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig(**options), progress, "\n".join(note for note in notes if note) or None


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 1 error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, progress, note = _config_from_args(args)
    except (ValueError, TypeError, OSError) as exc:
        parser.error(str(exc))
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")  # files only; no window
    if note:
        print(note)
    result = train(config, progress=progress, command=shlex.join(["python", "-m", "effv2_lib.train", *argv]))
    return 130 if result.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
