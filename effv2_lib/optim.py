"""Optimization pieces of the training recipe: optimizer, learning-rate schedule, weight EMA.

Tan & Le (2021), Section 5.1 (ImageNet settings): RMSProp with decay 0.9 and momentum 0.9,
batch norm momentum 0.99 (PyTorch's momentum=0.01; see `effv2_lib.blocks` for the 0.1 the
official code and torchvision use), weight decay 1e-5, a learning rate warmed up from 0 and
decayed by 0.97 every 2.4 epochs (a staircase on the global step, counted from step 0 as in
the official code, which decays with Keras's ``ExponentialDecay(staircase=True)`` inside its
``WarmupLearningRateSchedule``, so the warm-up epochs count too), and an exponential moving
average of the weights (decay 0.9999). For CIFAR the usual recipe, SGD with
Nesterov momentum and a cosine decay, is the default; the paper's choices are options. Neither
decays BatchNorm parameters or biases.

PyTorch's RMSprop with momentum applies the learning rate outside the momentum buffer
(``buf = m * buf + g / rms``; ``p -= lr * buf``), TensorFlow's inside it (``buf = m * buf +
lr * g / rms``; ``p -= buf``; TF1's ``RMSPropOptimizer`` and Keras's ``RMSprop`` alike): the two
agree while the learning rate is constant and differ after each change of the learning rate,
by how fast the buffer forgets the old one.

The official code has two RMSprops: ``main.py`` (TF1, TPU estimator) builds
``tf.compat.v1.train.RMSPropOptimizer`` (``utils.build_optimizer``), which starts the running
average of squared gradients at 1; ``main_tf2.py`` builds Keras's ``RMSprop``
(``build_tf2_optimizer``), which starts it at 0, as PyTorch does.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int, check_real

__all__ = ["OPTIMIZERS", "LR_SCHEDULES", "parameter_groups", "build_optimizer", "WarmupThenDecay", "ModelEMA"]

OPTIMIZERS = ("sgd", "rmsprop")
LR_SCHEDULES = ("cosine", "exponential")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups: conv and linear weights decay, BatchNorm parameters and biases do not.

    Weight decay pulls weights towards 0. A BatchNorm scale or shift and a bias are not weights
    whose size measures complexity; decaying BN scales only fights the normalization.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv [O, I, k, k], linear [O, I]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN gamma / beta, biases [C]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, batch_size: int, lr: float | None = None,
                    weight_decay: float | None = None, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD (Nesterov) or RMSprop over `parameter_groups`, with the recipe's defaults.

    Defaults scale the learning rate linearly with the batch: 0.1 per 128 images for SGD, 0.016
    per 256 for RMSprop (the paper's); weight decay 5e-4 for SGD, 1e-5 for RMSprop (the paper's).
    The optimizer's ``defaults`` hold the values chosen.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    check_int("batch_size", batch_size, 1)
    sgd = name == "sgd"
    if lr is None:
        lr = 0.1 * batch_size / 128 if sgd else 0.016 * batch_size / 256
    if weight_decay is None:
        weight_decay = 5e-4 if sgd else 1e-5
    groups = parameter_groups(model, weight_decay)
    if sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    # TF's RMSProp adds epsilon (1e-3) under the square root, PyTorch's after it: sqrt(1e-3) after
    # the root puts the same floor under the denominator. TF1's RMSPropOptimizer (automl's main.py)
    # also starts the squared average at 1, PyTorch at 0 like Keras's RMSprop (main_tf2.py); the
    # warm-up keeps the resulting large first steps small.
    return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=math.sqrt(1e-3), momentum=momentum,
                               weight_decay=weight_decay)


@dataclass
class WarmupThenDecay:
    """Learning-rate factor for step t: linear warm-up, then cosine to 0 or exponential decay.

    Used with torch.optim.lr_scheduler.LambdaLR (a callable object, so the scheduler's
    state_dict keeps its settings). "exponential" is the paper's staircase decay: x decay_rate
    every decay_epochs epochs (0.97 every 2.4 epochs in Section 5.1), counted from step 0 as
    the official code counts it (google/automl efficientnetv2/utils.py, ``WarmupLearningRateSchedule``:
    the warm-up replaces the decayed rate for its steps, it does not delay the decay). Our
    cosine runs from the end of the warm-up to 0, the usual PyTorch recipe; the official code's
    cosine also counts from step 0.
    """

    warmup_steps: int
    total_steps: int
    steps_per_epoch: int
    kind: str = "cosine"
    decay_rate: float = 0.97
    decay_epochs: float = 2.4

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("total_steps", self.total_steps, 1)
        check_int("steps_per_epoch", self.steps_per_epoch, 1)
        check_choice("kind", self.kind, LR_SCHEDULES)
        check_real("decay_rate", self.decay_rate, 0, 1)
        check_real("decay_epochs", self.decay_epochs, 1e-9, math.inf, allowed="a number > 0")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # 1/W .. 1: the first step is not taken at lr 0
        after = step - self.warmup_steps
        if self.kind == "cosine":
            progress = min(1.0, after / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return self.decay_rate ** math.floor(step / (self.decay_epochs * self.steps_per_epoch))


class ModelEMA:
    """Exponential moving average of a model's weights and BatchNorm buffers.

    ema <- d * ema + (1 - d) * model after every step, with d = min(decay, (1 + t) / (10 + t))
    so the average does not remember the random initialization for thousands of steps (the
    warm-up the official TF code and timm use). Hand-rolled rather than
    torch.optim.swa_utils.AveragedModel because AveragedModel keeps its step counter on the
    device and reads it twice per update (two host synchronizations per step); here the counter
    is a Python int and the floating-point tensors are updated by one fused foreach lerp.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        # [0, 1): the largest float below 1 is the upper bound (1 would never move the average)
        decay = check_real("decay", decay, 0, math.nextafter(1.0, 0.0), allowed="a number in [0, 1)")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        floats, integers = ([], []), ([], [])
        for ema_t, model_t in zip(self._tensors(self.module), self._tensors(model), strict=True):
            group = floats if ema_t.is_floating_point() else integers
            group[0].append(ema_t)
            group[1].append(model_t)
        torch._foreach_lerp_(floats[0], floats[1], 1 - decay)
        for ema_t, model_t in zip(*integers, strict=True):  # BatchNorm's num_batches_tracked: copied
            ema_t.copy_(model_t)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])
