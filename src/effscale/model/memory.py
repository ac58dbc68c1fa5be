"""Peak training memory, estimated before anything is allocated, and the micro-batch plan.

peak = weights + grads + optimizer state + EMA copy + autocast weight copies   (per parameter)
     + saved activations of one micro-batch  (effscale.profile, calibrated against autograd)
     + gradient transients: the two largest feature maps of the micro-batch, live while
       backward turns one saved map into its gradient
     + a workspace margin: 10% of the above + 512 MiB (cuDNN workspaces, allocator slack)
With gradient checkpointing a block keeps only its input; one block at a time is recomputed
in backward, so saved activations = stem + every block input + the largest block + head.

`plan()` picks the largest micro-batch whose estimate fits the budget (free CUDA memory, or
an explicit `memory_budget`); gradient accumulation over ceil(batch / micro) chunks keeps the
requested batch. On CPU without a budget it only reports: nothing is split.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .profile import BYTES, count_layers, profile
from .names import model_spec

GiB = 2 ** 30
STATE_PER_PARAM = {"rmsprop": 2, "rmsprop_tf": 2, "sgd": 1, "adamw": 2}  # fp32 slots
WORKSPACE_FRACTION = 0.10
WORKSPACE_FIXED = 512 * 2 ** 20


@dataclass(frozen=True)
class Plan:
    model: str
    resolution: int
    batch_size: int
    micro_batch: int
    accum_steps: int
    precision: str
    grad_checkpointing: bool
    estimate_bytes: int        # peak at micro_batch
    full_batch_bytes: int      # peak if the whole batch went through at once
    budget_bytes: int | None   # None: no limit known (CPU)
    fits: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        budget = "no limit (CPU)" if self.budget_bytes is None else f"{self.budget_bytes / GiB:.1f} GiB"
        text = (f"memory plan: batch {self.batch_size} needs ~{self.full_batch_bytes / GiB:.2f} GiB "
                f"({self.precision}{', grad checkpointing' if self.grad_checkpointing else ''}); "
                f"budget {budget}")
        if self.accum_steps > 1:
            text += (f"; micro-batch {self.micro_batch} x {self.accum_steps} accumulation steps "
                     f"(~{self.estimate_bytes / GiB:.2f} GiB)")
        if not self.fits:
            text += "; does NOT fit even at micro-batch 1"
        return text


def parse_bytes(value) -> int | None:
    """80e9, "80GB", "80GiB", "512MB" -> bytes (GB = 1e9, GiB = 2^30)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory_budget must be > 0, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?b?)?\s*", str(value).lower())
    if not match:
        raise ValueError(f"memory_budget {value!r} is not a size like 8GB, 512MiB or 80e9")
    number, unit = float(match.group(1)), (match.group(2) or "").rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
             "ki": 2 ** 10, "mi": 2 ** 20, "gi": 2 ** 30, "ti": 2 ** 40}[unit]
    return parse_bytes(number * scale)


def estimate(model: str, batch_size: int, *, resolution: int | None = None,
             precision: str = "fp32", grad_checkpointing: bool = False,
             optimizer: str = "rmsprop_tf", ema: bool = True, num_classes: int = 1000,
             stem_stride: int = 2, in_chans: int = 3) -> int:
    """Estimated peak bytes of one training step of `batch_size` images."""
    prof = profile(model, resolution, num_classes=num_classes, stem_stride=stem_stride,
                   in_chans=in_chans, precision=precision)  # checks the arguments
    counts = count_layers(model_spec(model, stem_stride=stem_stride), prof.resolution,
                          num_classes, stem_stride, in_chans)
    per_param = 4 * (2 + STATE_PER_PARAM.get(optimizer, 2) + (1 if ema else 0))
    if precision != "fp32":
        per_param += BYTES[precision]  # autocast's low-precision copies of the weights
    saved = counts.saved
    if grad_checkpointing:  # one block at a time is recomputed in backward
        saved = (counts.stem_saved + sum(counts.block_inputs) + max(counts.block_saved, default=0)
                 + counts.head_saved)
    activations = (saved + 2 * counts.largest) * BYTES[precision] * batch_size
    total = counts.params * per_param + activations
    return int(total * (1 + WORKSPACE_FRACTION) + WORKSPACE_FIXED)


def device_budget(device) -> int | None:
    """Free memory of a CUDA device; None for anything else (no limit is enforced)."""
    import torch
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def plan(model: str, batch_size: int, *, resolution: int | None = None, precision: str = "fp32",
         grad_checkpointing: bool = False, optimizer: str = "rmsprop_tf", ema: bool = True,
         num_classes: int = 1000, stem_stride: int = 2, in_chans: int = 3,
         memory_budget=None, device=None) -> Plan:
    """The largest micro-batch that fits (explicit budget, else the device's free memory)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = parse_bytes(memory_budget)
    if budget is None and device is not None:
        budget = device_budget(device)
    kwargs = dict(resolution=resolution, precision=precision,
                  grad_checkpointing=grad_checkpointing, optimizer=optimizer, ema=ema,
                  num_classes=num_classes, stem_stride=stem_stride, in_chans=in_chans)
    full = estimate(model, batch_size, **kwargs)
    res = resolution or model_spec(model, stem_stride=stem_stride).resolution
    if budget is None or full <= budget:
        return Plan(model, res, batch_size, batch_size, 1, precision, grad_checkpointing,
                    full, full, budget, True)
    largest = max_micro_batch(model, budget, batch_size, **kwargs)
    fits = largest >= 1
    accum = math.ceil(batch_size / max(largest, 1))
    micro = math.ceil(batch_size / accum)  # balance the chunks: 64 at 40 -> 32 + 32, not 40 + 24
    return Plan(model, res, batch_size, micro, accum, precision, grad_checkpointing,
                estimate(model, micro, **kwargs), full, budget, fits)


def max_micro_batch(model: str, budget: int, limit: int, **kwargs) -> int:
    """Largest batch <= limit whose estimate fits `budget` (0 if not even 1 fits). The
    estimate grows linearly with the batch, so bisection finds it."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if estimate(model, mid, **kwargs) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def family_table(budget="80GB", batch_size: int = 32, models=None) -> list[dict]:
    """For each model at its own resolution: peak GiB at `batch_size` and the largest batch
    that fits `budget` in fp32, bf16 and bf16 + grad checkpointing, and the cheapest of these
    settings in which `batch_size` fits without accumulation."""
    limit = parse_bytes(budget)
    rows = []
    for name in models or [f"b{i}" for i in range(8)]:
        row = {"model": name, "res": model_spec(name).resolution}
        chosen = None
        for label, precision, ckpt in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                       ("bf16+ckpt", "bf16", True)):
            kw = dict(precision=precision, grad_checkpointing=ckpt)
            need = estimate(name, batch_size, **kw)
            row[f"{label} GiB@{batch_size}"] = round(need / GiB, 1)
            row[f"{label} max batch"] = max_micro_batch(name, limit, 8192, **kw)
            if chosen is None and need <= limit:
                chosen = label
        row[f"fits {batch_size}"] = chosen or "no"
        rows.append(row)
    return rows
