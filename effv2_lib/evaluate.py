"""Test accuracy, confusion matrix and BatchNorm re-estimation at the evaluation size.

Progressive learning trains most epochs on images smaller than the test images (Tan & Le
2021, Section 4; the final training size is about 20% below the evaluation size in their
Table 6 / model table). Two things then differ between training and testing:

* the apparent object size, which the network's weights adapted to, and
* the BatchNorm running statistics, which were averaged over augmented training batches at
  the training size.

Touvron et al. (2019), "Fixing the train-test resolution discrepancy" (FixRes), show that this
gap costs accuracy, and repair it by fine-tuning at the test size. The cheapest part of such a
repair is to recompute each BatchNorm's mean and variance on a few batches of (unaugmented)
training images at the test size, weights untouched: `reestimate_batchnorm` does that (it is
not FixRes and not part of the EfficientNetV2 recipe); the trainer measures the accuracy
before and after.

Command line (evaluate saved weights, e.g. a GPU run's, on another copy of the test set)::

    python -m effv2_lib.evaluate RUN_DIR_OR_WEIGHTS... --data DIR [--model cifar] [--json OUT]

Each run directory is evaluated on its own (one line each); weight files named directly are the
shards of one model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ._cli import int_at_least, one_line_errors, output_path
from ._cli import model_name as model_name_type

__all__ = ["EvalResult", "evaluate", "reestimate_batchnorm", "main"]


@dataclass
class EvalResult:
    """Top-1 accuracy and the confusion matrix ``confusion[true, predicted]`` (counts)."""

    accuracy: float
    confusion: Tensor  # int64 [C, C], on the CPU
    num_images: int


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, *,
             bf16: bool = False, all_reduce: bool = False) -> EvalResult:
    """Run `model` in eval mode over (images [B, 3, S, S], labels int64 [B]) batches.

    Counts stay on the device until the end (one host synchronization per call). With
    `all_reduce`, the counts are summed over the ranks of the default process group, so each
    rank can evaluate its own share of the test set.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    try:
        for images, labels in batches:
            if labels.ndim != 1:
                raise ValueError(f"evaluation labels must be int64 class indices [B], got shape "
                                 f"{list(labels.shape)} (soft labels? evaluate without Mixup)")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                predicted = model(images).argmax(1)  # [B]
            # confusion[t, p] += 1 for every (label t, prediction p) pair. (torch.bincount would
            # read its input's maximum back to the host on CUDA; index_add_ does not.)
            pairs = labels * num_classes + predicted
            confusion.index_add_(0, pairs, torch.ones_like(pairs))
    finally:
        model.train(was_training)
    if all_reduce:
        torch.distributed.all_reduce(confusion)
    confusion = confusion.view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    accuracy = float(confusion.diagonal().sum()) / total if total else float("nan")
    return EvalResult(accuracy, confusion, total)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Iterable[Tensor], *, bf16: bool = False) -> int:
    """Recompute every BatchNorm's running mean and variance on `images` (at the test size).

    Each BatchNorm restarts from zero statistics and averages all batches equally (momentum
    None); only the BatchNorms run in training mode, so dropout and stochastic depth stay off
    and the statistics see the network as it is evaluated. Weights are not changed. `images`
    yields image batches [B, 3, S, S] (or (images, labels) pairs) at the evaluation size S.
    Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to re-estimate")
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    device = next(model.parameters()).device
    count = 0
    try:
        for batch in images:
            batch = batch[0] if isinstance(batch, (tuple, list)) else batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(batch)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if count == 0:
        raise ValueError("images yielded no batch: BatchNorm statistics were reset and not re-estimated")
    return count


def _weight_groups(paths: list[str]) -> list[tuple[str, list[Path], dict]]:
    """What to evaluate: each run directory is one model (its model*.pt, its summary.json's
    settings); weight files given by name are the shards of one more."""
    from .files import read_json

    groups: list[tuple[str, list[Path], dict]] = []
    loose: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            settings: dict = {}
            summary_path = path / "summary.json"
            if summary_path.is_file():
                summary = read_json(summary_path)
                if not isinstance(summary, dict):
                    raise ValueError(f"{summary_path} holds a JSON {type(summary).__name__}, not a run's summary")
                settings = dict(model=summary.get("model_name"), eval_size=summary.get("eval_size"),
                                dataset=summary.get("dataset"))
            shards = sorted(path.glob("model*.pt"))
            if not shards:
                raise FileNotFoundError(f"{path} holds no model*.pt weights: train with --save-weights to "
                                        f"write them, or name the weight files")
            groups.append((str(path), shards, settings))
        elif path.is_file():
            loose.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a run directory nor a weights file")
    if loose:
        groups.append((", ".join(map(str, loose)), loose, {}))
    return groups


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    from .augment import DeviceLoader
    from .checkpoint import load_state_checked, load_weights
    from .data import NORMALIZATION, command_line_words, load_cifar
    from .model import MODEL_NAMES, build_model
    from .runtime import pick_device

    parser = argparse.ArgumentParser(
        prog="python -m effv2_lib.evaluate",
        description="Test accuracy of saved weights (model*.pt from a run directory, or weight "
                    "files) on the test split of a data directory. Each run directory is evaluated on "
                    "its own; weight files named directly are the shards of one model.")
    parser.add_argument("weights", nargs="+", help="run directories and/or weight files (shards are merged)")
    parser.add_argument("--data", required=True, help="directory with test.npz (and train.npz) or "
                                                      "an ImageFolder tree; see effv2_lib.data")
    parser.add_argument("--model", default=None, type=model_name_type, metavar="NAME",
                        help=f"model name: {', '.join(MODEL_NAMES)}, or arch:CODES (effv2_lib.search) "
                             f"(default: from the run's summary.json)")
    parser.add_argument("--dataset", default=None, choices=["cifar10", "cifar100"])
    parser.add_argument("--eval-size", type=int_at_least(8), default=None, metavar="PX",
                        help="test image size in px, >= 8 (default: the run's, else 32)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int_at_least(1), default=500)
    parser.add_argument("--json", type=output_path, default=None, metavar="OUT",
                        help="write the result to this JSON file")
    args = parser.parse_args(argv)

    try:
        groups = _weight_groups(args.weights)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    for source, _, settings in groups:
        if not (args.model or settings.get("model")):
            parser.error(f"--model is needed for {source}: no run directory with summary.json names its model")
    device = pick_device(args.device)
    datasets: dict = {}
    reports = []
    for source, files, settings in groups:
        model_name = args.model or settings["model"]
        dataset = args.dataset or settings.get("dataset") or "cifar10"
        eval_size = args.eval_size if args.eval_size is not None else settings.get("eval_size") or 32
        if dataset not in datasets:
            with command_line_words(download=None):  # data errors name --data, and evaluate has no --download
                datasets[dataset] = load_cifar(dataset, data_dir=args.data)
        data = datasets[dataset]
        model = build_model(model_name, num_classes=data.num_classes)
        load_state_checked(model, load_weights(files), source=source, model_name=model_name)
        model.to(device)
        mean, std = NORMALIZATION[dataset]
        loader = DeviceLoader(data.test, args.batch_size, device=device, image_size=eval_size, train=False,
                              mean=mean, std=std, generator=torch.Generator(device=device))
        result = evaluate(model, loader, data.num_classes)
        reports.append({"accuracy": result.accuracy, "num_images": result.num_images, "data": data.source,
                        "model": model_name, "eval_size": eval_size, "weights": [str(f) for f in files],
                        "confusion": result.confusion.tolist()})
        print((f"{source}: " if len(groups) > 1 else "")
              + f"{model_name} at {eval_size} px on {data.source}: top-1 {100 * result.accuracy:.2f}% "
                f"of {result.num_images} test images", flush=True)
    if args.json:
        report = reports[0] if len(reports) == 1 else {"results": reports}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
