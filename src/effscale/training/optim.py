"""Optimizers and the learning-rate schedule.

`RMSpropTF` is TensorFlow 1's RMSPropOptimizer, the one the EfficientNet paper trained with.
It differs from torch.optim.RMSprop in three ways that matter:
  1. epsilon is added *inside* the square root: g / sqrt(ms + eps), not g / (sqrt(ms) + eps).
     With eps 1e-3 this bounds the step at lr * g / 0.03; PyTorch's form with eps 1e-3 lets
     tiny ms blow a step up 30x more (and under fp16 gives NaNs);
  2. the mean square starts at 1, not 0, so the first steps are not huge;
  3. the learning rate multiplies the gradient before it enters the momentum buffer, so a lr
     change affects new gradients only (no jump when the schedule moves).
Weight decay is L2 added to the gradient (the reference adds wd * l2_loss to the loss).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RMSpropTF(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.016, alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or not 0 <= alpha < 1 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError("RMSpropTF needs lr, eps, weight_decay >= 0 and alpha, momentum in [0, 1)")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            momentum, wd = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd:
                    grad = grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)  # TF's "rms" slot starts at 1
                    if momentum:
                        state["momentum_buffer"] = torch.zeros_like(p)
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                denom = square_avg.add(eps).sqrt_()
                if momentum:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(grad, denom, value=lr)
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, denom, value=-lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_bn_bias: bool) -> list[dict]:
    """Two groups: weights that decay, and (unless decay_bn_bias) BN weights and all biases,
    i.e. every parameter with fewer than 2 dims, which don't."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if decay_bn_bias or p.ndim > 1 else no_decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0))
    return groups


def create_optimizer(model: nn.Module, name: str, *, lr: float, momentum: float, alpha: float,
                     eps: float, weight_decay: float, decay_bn_bias: bool) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, decay_bn_bias)
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose rmsprop, rmsprop_tf, sgd or adamw")


def lr_at(step: int, *, peak: float, steps_per_epoch: int, epochs: int, schedule: str,
          warmup_epochs: float, warmup_start: float, decay_rate: float,
          decay_epochs: float, warmup_fraction: float = 0.0) -> float:
    """The learning rate of optimizer step `step` (0-based): a pure function, so the schedule
    needs no state beyond the step count and a resumed run gets exactly the same values.

    The warm-up is counted in steps: the longer of `warmup_epochs` epochs and
    `warmup_fraction` of the run, a linear ramp from `warmup_start` x peak. A fraction keeps
    the ramp long enough in steps on a tiny dataset (digits: 10 steps an epoch at batch 128),
    where a one-epoch warm-up is over before BatchNorm's running statistics can follow."""
    total = steps_per_epoch * epochs
    warmup_steps = max(warmup_epochs * steps_per_epoch, warmup_fraction * total)
    if step < warmup_steps:
        return peak * (warmup_start + (1.0 - warmup_start) * step / warmup_steps)
    epoch = step / steps_per_epoch  # fractional epoch: the schedule moves every step
    warmup = warmup_steps / steps_per_epoch
    if schedule == "exponential":  # smooth x decay_rate per decay_epochs after warm-up
        return peak * decay_rate ** ((epoch - warmup) / (decay_epochs or 1.0))
    if schedule == "step":  # TF reference: staircase counted from step 0, warm-up overrides it
        return peak * decay_rate ** math.floor(epoch / decay_epochs)
    if schedule == "cosine":
        span = max(epochs - warmup, 1e-9)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - warmup) / span)))
    raise ValueError(f"unknown schedule {schedule!r}; choose exponential, step or cosine")


def momentum_at(lr: float, *, peak: float, momentum: float, momentum_at_peak: float | None) -> float:
    """Momentum cycled against the lr, as in OneCycle: `momentum` at lr 0, `momentum_at_peak`
    at the peak, linear in between (None: constant). Less momentum while the lr is high keeps
    the effective step lr / (1 - momentum) from peaking with it; that, with the low-start
    warm-up, is what lets a high peak lr train small networks without outrunning BatchNorm."""
    if momentum_at_peak is None or peak <= 0:
        return momentum
    return momentum + (momentum_at_peak - momentum) * min(1.0, lr / peak)
