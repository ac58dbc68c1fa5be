"""Measured cost: training and inference throughput, batch-1 latency and peak memory of model
names, on one device, measured the same way for every model so that they can be compared.

Method (benchmarks/throughput.py's, for several models of one library):
- every model is built (and its optimizer made) before anything is timed;
- `warmup` untimed rounds, then `rounds` timed rounds; within a round the models take turns
  (A, B, C, A, B, C, ...) for each kind of measurement, so that drift in clocks or in other
  processes' load hits every model alike; reported values are medians over the rounds, with
  the (min, max) over the rounds as the spread;
- a training step: zero_grad, forward, cross-entropy with label smoothing 0.1, backward, SGD
  (momentum 0.9) step, all in train mode; inference: a no_grad forward in eval mode at the same
  batch; latency: an eval forward of one image, timed `LATENCY_CALLS` times per round, its
  median and 90th percentile over all timed calls of all rounds;
- on CUDA every timed region starts and ends with torch.cuda.synchronize();
- precision "auto": bf16 autocast on CUDA, fp32 on CPU; channels_last by default on CUDA.

Peak memory of one training step, in its own pass after the timing (so that its bookkeeping
slows no timed step):
- CUDA ("cuda max_memory_allocated"): the peak allocated during one step (input batch
  included) above what was allocated before it, plus this model's parameters, buffers and
  optimizer state (allocated before the step, so part of what it needs);
- CPU ("cpu: autograd saved tensors + params"): the bytes of the tensors autograd saves for
  backward during one step (each storage once, parameters excluded; caught with
  torch.autograd.graph.saved_tensors_hooks) plus parameter + gradient + optimizer-state bytes.
  The CPU figure leaves out transient buffers (gradients of feature maps, workspaces), so it is
  a lower bound that ranks models the way their training memory grows; it does not depend on
  the allocator or on other processes, which the resident set size does.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .net import create_model
from .profile import profile

LATENCY_CALLS = 20   # timed batch-1 calls per model per round
LABEL_SMOOTHING = 0.1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_METHODS = {"cuda": "cuda max_memory_allocated",
                "cpu": "cpu: autograd saved tensors + params"}
_OOM = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
              torch.cuda.OutOfMemoryError})


@dataclass(frozen=True)
class Measured:
    name: str
    resolution: int
    batch: int
    device: str
    train_img_s: float                       # median over rounds
    train_img_s_spread: tuple[float, float]  # (min, max) over rounds
    infer_img_s: float
    infer_img_s_spread: tuple[float, float]
    latency_ms: float                        # batch 1, eval, median over all timed calls
    latency_p90_ms: float
    peak_mib: float                          # one training step, see peak_method
    peak_method: str
    rounds: int
    precision: str = "fp32"
    channels_last: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available "
                             f"(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} "
                             f"CUDA device(s) visible")
        return dev
    if dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    return dev


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Setup:
    def __init__(self, device: torch.device, precision: str, channels_last: bool):
        self.device = device
        self.dtype = DTYPES[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _Candidate:
    """One model with its optimizer, inputs and what has been measured of it."""

    def __init__(self, name, resolution, model, optimizer, scaler, x, y, x1):
        self.name, self.resolution = name, resolution
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.x, self.y, self.x1 = x, y, x1
        self.train: list[float] = []
        self.infer: list[float] = []
        self.latency: list[float] = []

    def train_step(self, setup: _Setup, x=None, y=None) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            out = self.model(self.x if x is None else x)
        loss = F.cross_entropy(out.float(), self.y if y is None else y,
                               label_smoothing=LABEL_SMOOTHING)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def infer_step(self, setup: _Setup, x) -> None:
        self.model.eval()
        with torch.no_grad(), setup.autocast():
            self.model(x)


def _timed(fn, setup: _Setup) -> float:
    setup.sync()
    start = time.perf_counter()
    fn()
    setup.sync()
    return time.perf_counter() - start


def _persistent_bytes(c: _Candidate) -> int:
    """Parameters, buffers and optimizer state: what the model holds between steps."""
    tensors = list(c.model.parameters()) + list(c.model.buffers())
    for state in c.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _peak_cuda(c: _Candidate, setup: _Setup) -> int:
    c.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    setup.sync()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(setup.device) - _persistent_bytes(c)
    torch.cuda.reset_peak_memory_stats(setup.device)
    # a fresh input, so that the batch counts too
    x = torch.randn_like(c.x).contiguous(memory_format=setup.memory_format)
    y = c.y.clone()
    c.train_step(setup, x, y)
    setup.sync()
    peak = torch.cuda.max_memory_allocated(setup.device) - before
    del x, y
    return peak


def _peak_cpu(c: _Candidate, setup: _Setup) -> int:
    params = {p.untyped_storage().data_ptr() for p in c.model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c.train_step(setup)
    param_bytes = sum(p.numel() * p.element_size() for p in c.model.parameters())
    state_bytes = sum(v.numel() * v.element_size() for state in c.optimizer.state.values()
                      for v in state.values() if torch.is_tensor(v))
    return sum(saved.values()) + 2 * param_bytes + state_bytes  # params + grads + state


def _does_not_fit(exc: BaseException) -> bool:
    if isinstance(exc, _OOM):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text.lower())


def measure(names, *, device="cpu", batch: int = 64, num_classes: int = 1000, in_chans: int = 3,
            stem_stride: int = 2, resolution: int | None = None, rounds: int = 5,
            warmup: int = 2, precision: str = "auto",
            channels_last: bool | None = None) -> list[Measured]:
    """Measure every named model's training and inference throughput, batch-1 latency and peak
    training memory, interleaved across models (see the module docstring for the method).

    `resolution` overrides every model's own; names may set theirs (`b0@res=64`). Bad input
    raises ValueError with one line: an unknown or absent device, batch < 1, rounds < 1,
    warmup < 0, a bad model name (the name parser's message), a batch that does not fit."""
    names = [names] if isinstance(names, str) else list(names)
    dev, precision, channels_last = _checked(names, device, batch, rounds, warmup, precision,
                                             channels_last, num_classes, in_chans, stem_stride)
    # every name and resolution checked before anything is built
    resolutions = [profile(n, resolution, num_classes=num_classes, stem_stride=stem_stride,
                           in_chans=in_chans).resolution for n in names]
    setup = _Setup(dev, precision, channels_last)
    current = {"name": names[0]}
    candidates: list[_Candidate] = []
    try:
        for name, res in zip(names, resolutions):
            current["name"] = name
            candidates.append(_build(name, res, setup, batch, num_classes, in_chans,
                                     stem_stride, precision))
        for round_ in range(warmup + rounds):
            _one_round(candidates, setup, batch, counted=round_ >= warmup, current=current)
        peaks = []
        for c in candidates:
            current["name"] = c.name
            peaks.append(_peak_cuda(c, setup) if dev.type == "cuda"
                         else _peak_cpu(c, setup))
    except Exception as exc:
        if not _does_not_fit(exc):
            raise
        current["failed"] = True
    if current.get("failed"):
        # raised here, outside the handler, so that the out-of-memory traceback (and the
        # partial forward its frames hold) is gone before the memory is released
        candidates.clear()
        _release(dev)
        raise ValueError(f"batch {batch} does not fit on {device} for {current['name']}")
    results = [_measured(c, peak, batch, str(device), PEAK_METHODS[dev.type], rounds,
                         precision, bool(channels_last)) for c, peak in zip(candidates, peaks)]
    candidates.clear()
    _release(dev)
    return results


def _checked(names, device, batch, rounds, warmup, precision, channels_last, num_classes,
             in_chans, stem_stride):
    """measure()'s arguments checked (one ValueError line each); (device, precision,
    channels_last) with the automatic choices made."""
    if not names:
        raise ValueError("measure needs at least one model name")
    dev = _device(device)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use fp32 or bf16 on cpu")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and "
                         f"{in_chans}")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    return dev, precision, dev.type == "cuda" if channels_last is None else channels_last


def _one_round(candidates, setup, batch: int, *, counted: bool, current: dict) -> None:
    """Training steps, inference steps, then batch-1 latency, each interleaved across the
    models (A B C, A B C, ...); kept only when `counted` (after the warm-up)."""
    for c in candidates:
        current["name"] = c.name
        seconds = _timed(lambda: c.train_step(setup), setup)
        if counted:
            c.train.append(batch / seconds)
    for c in candidates:
        current["name"] = c.name
        seconds = _timed(lambda: c.infer_step(setup, c.x), setup)
        if counted:
            c.infer.append(batch / seconds)
    for c in candidates:
        current["name"] = c.name
        calls = LATENCY_CALLS if counted else 3
        times = [_timed(lambda: c.infer_step(setup, c.x1), setup) for _ in range(calls)]
        if counted:
            c.latency += times


def _measured(c, peak, batch, device, peak_method, rounds, precision, channels_last):
    return Measured(
        name=c.name, resolution=c.resolution, batch=batch, device=device,
        train_img_s=statistics.median(c.train), train_img_s_spread=(min(c.train), max(c.train)),
        infer_img_s=statistics.median(c.infer), infer_img_s_spread=(min(c.infer), max(c.infer)),
        latency_ms=statistics.median(c.latency) * 1e3,
        latency_p90_ms=_percentile(c.latency, 0.9) * 1e3,
        peak_mib=peak / 2**20, peak_method=peak_method, rounds=rounds, precision=precision,
        channels_last=channels_last)


def _build(name, resolution, setup: _Setup, batch, num_classes, in_chans, stem_stride,
           precision) -> _Candidate:
    torch.manual_seed(0)
    model = create_model(name, num_classes, stem_stride=stem_stride, in_chans=in_chans)
    model = model.to(setup.device, memory_format=setup.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=precision == "fp16")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_chans, resolution, resolution, generator=gen)
    x = x.to(setup.device).contiguous(memory_format=setup.memory_format)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(setup.device)
    x1 = x[:1].clone().contiguous(memory_format=setup.memory_format)
    return _Candidate(name, resolution, model, optimizer, scaler, x, y, x1)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
