"""One optimizer step's parts: the learning rate, gradients over micro-batches, OOM retry."""

from __future__ import annotations

import contextlib

import torch

from .optim import lr_at, momentum_at


def apply_schedule(optimizer: torch.optim.Optimizer, step: int, schedule: dict) -> float:
    """Set the learning rate of `step` and the momentum cycled against it (`momentum_at`) on
    every parameter group; the one place per-step hyperparameters are set. `schedule` holds
    lr_at's keyword arguments plus `momentum` and `momentum_at_peak`. Returns the lr."""
    lr_kwargs = {k: v for k, v in schedule.items() if k not in ("momentum", "momentum_at_peak")}
    lr = lr_at(step, **lr_kwargs)
    momentum = momentum_at(lr, peak=schedule["peak"], momentum=schedule["momentum"],
                           momentum_at_peak=schedule["momentum_at_peak"])
    for group in optimizer.param_groups:
        group["lr"] = lr
        if "momentum" in group:
            group["momentum"] = momentum
    return lr


def forward_backward(model, images, labels, *, micro_batch: int, criterion, amp, scaler,
                     no_sync=None) -> torch.Tensor:
    """Gradients of the mean loss over the whole batch, accumulated over micro-batches.
    Each chunk's mean loss is weighted by its share of the batch, so the sum equals the
    full-batch mean for any split. DDP all-reduces only on the last chunk."""
    n = images.shape[0]
    chunks = list(zip(images.split(micro_batch), labels.split(micro_batch)))
    total = torch.zeros((), device=images.device)
    for i, (x, y) in enumerate(chunks):
        sync = i == len(chunks) - 1 or no_sync is None
        with (contextlib.nullcontext() if sync else no_sync()), amp:
            loss = criterion(model(x), y) * (x.shape[0] / n)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


def step_with_retry(model, images, labels, *, micro_batch: int, optimizer, log, **kwargs):
    """forward_backward; on a CUDA out-of-memory error retry the same batch with half the
    micro-batch (gradients of the failed attempt are dropped, so nothing is counted twice)."""
    while True:
        try:
            return forward_backward(model, images, labels, micro_batch=micro_batch, **kwargs), micro_batch
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if micro_batch == 1:
                raise
            micro_batch = max(1, micro_batch // 2)
            log(f"warning: out of memory; retrying this step with micro-batch {micro_batch}")
