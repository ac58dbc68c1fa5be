"""Training and inference throughput and peak memory: effscale vs timm vs torchvision.

Same variant, batch, resolution, precision and device for all three, in one process, measured
interleaved (effscale, timm, torchvision, effscale, ... for --rounds rounds) so that drift in
clocks or in other processes' load hits every library alike. Reports per-library medians and
the ratios effscale/timm and effscale/torchvision. A benchmark, not a test: nothing asserts.

    python benchmarks/throughput.py --model b0 --batch 32 --device cpu --rounds 5

Peak memory: on CUDA torch.cuda.max_memory_allocated above what was allocated before the
measurement; on Linux CPU the peak resident set size above the RSS before it (VmHWM, reset
through /proc/self/clear_refs, with glibc told to return large blocks to the OS at once so
that memory freed by an earlier measurement does not hide this one's); elsewhere n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import effscale  # noqa: E402  (the checkout's, also when not installed)

LIBRARIES = ("effscale", "timm", "torchvision")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DROP_PATH = 0.2  # effscale's and torchvision's default; timm's default is 0, so it is passed


def build(library: str, variant: str, num_classes: int) -> torch.nn.Module:
    if library == "effscale":
        return effscale.create_model(variant, num_classes, drop_path_rate=DROP_PATH)
    if library == "timm":
        import timm
        return timm.create_model(f"efficientnet_{variant}", num_classes=num_classes,
                                 drop_path_rate=DROP_PATH)
    import torchvision
    return getattr(torchvision.models, f"efficientnet_{variant}")(
        num_classes=num_classes, stochastic_depth_prob=DROP_PATH)


# ---- memory ----------------------------------------------------------------------------------

class PeakMemory:
    """Peak bytes above the starting point of one measurement, or None where unavailable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = device.type == "cpu" and self._cpu_supported()

    @staticmethod
    def _cpu_supported() -> bool:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed: big tensors go back at free
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM
            return True
        except (OSError, AttributeError):
            return False

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.cpu:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status("VmRSS")

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - self.base
        if self.cpu:
            return self._status("VmHWM") - self.base
        return None


# ---- measuring -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    steps: int

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


@dataclass
class Candidate:
    """One library's model with its optimizer; lives for the whole run."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def train_step(c: Candidate, x, y, setup: Setup) -> None:
    c.model.train()
    with setup.autocast():
        loss = F.cross_entropy(c.model(x), y)
    c.optimizer.zero_grad(set_to_none=True)
    c.scaler.scale(loss).backward()
    c.scaler.step(c.optimizer)
    c.scaler.update()


def infer_step(c: Candidate, x, setup: Setup) -> None:
    c.model.eval()
    with torch.inference_mode(), setup.autocast():
        c.model(x)


def images_per_s(step, batch: int, setup: Setup) -> float:
    step()  # warm-up: allocator, kernels, lazy optimizer state
    setup.sync()
    start = time.perf_counter()
    for _ in range(setup.steps):
        step()
    setup.sync()
    return setup.steps * batch / (time.perf_counter() - start)


def peak_bytes(step, memory: PeakMemory) -> int | None:
    memory.start()
    step()
    return memory.peak()


def run(args) -> dict[str, dict[str, list]]:
    device = torch.device(args.device)
    setup = Setup(device, DTYPES[args.precision], args.channels_last, args.steps)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    resolution = args.resolution or effscale.model_spec(args.model).resolution
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, resolution, resolution, generator=gen)
    x = x.to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)

    candidates = []
    for name in LIBRARIES:
        torch.manual_seed(0)
        model = build(name, args.model, 1000).to(device, memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        candidates.append(Candidate(name, model, optimizer, scaler))

    results = {c.name: {"train": [], "infer": []} for c in candidates}
    # Round 0 is a warm-up and is not counted: whoever runs first would otherwise pay for
    # process-wide first-use costs (thread pool, kernel caches) alone.
    for round_ in range(args.rounds + 1):
        for kind in ("train", "infer"):
            for c in candidates:  # interleaved: A B C, A B C, ...
                step = ((lambda: train_step(c, x, y, setup)) if kind == "train"
                        else (lambda: infer_step(c, x, setup)))
                results[c.name][kind].append(images_per_s(step, args.batch, setup))
        label = f"round {round_}/{args.rounds}" if round_ else "warm-up round (not counted)"
        print(f"{label}: " + ", ".join(
            f"{c.name} {results[c.name]['train'][-1]:.1f}/{results[c.name]['infer'][-1]:.1f}"
            for c in candidates) + " img/s (train/infer)", flush=True)
    for r in results.values():
        r["train"], r["infer"] = r["train"][1:], r["infer"][1:]

    # Memory last, in its own passes: on CPU its allocator settings (every large block mapped
    # and unmapped on its own) cost system time that must not slow the timed rounds. Two
    # passes in opposite orders, keeping each library's smaller peak, so that no library is
    # charged for allocations an earlier one left behind.
    memory = PeakMemory(device)
    for c in candidates + candidates[::-1]:
        r = results[c.name]
        for kind, step in (("train_mem", lambda: train_step(c, x, y, setup)),
                           ("infer_mem", lambda: infer_step(c, x, setup))):
            peak = peak_bytes(step, memory)
            r[kind] = peak if r.get(kind) is None else min(r[kind], peak)
    return results


# ---- reporting -------------------------------------------------------------------------------

def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of (ours / theirs) within a round: measurements taken seconds apart
    share the machine's load, so pairing them cancels most of the drift between rounds."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def report(results: dict) -> str:
    lines = ["| library | train img/s median | train min-max | infer img/s median | "
             "infer min-max | train peak MiB | infer peak MiB |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {statistics.median(r['train']):.1f} | {min(r['train']):.1f}-"
            f"{max(r['train']):.1f} | {statistics.median(r['infer']):.1f} | "
            f"{min(r['infer']):.1f}-{max(r['infer']):.1f} | {_mib(r['train_mem'])} | "
            f"{_mib(r['infer_mem'])} |")
    lines += ["", "ratios: median of per-round ratios (ratio of the medians in brackets)"]
    ours = results["effscale"]
    for other in ("timm", "torchvision"):
        theirs = results[other]
        parts = [f"{kind} {_paired_ratio(ours[kind], theirs[kind]):.3f}x "
                 f"({statistics.median(ours[kind]) / statistics.median(theirs[kind]):.3f}x)"
                 for kind in ("train", "infer")]
        lines.append(f"effscale/{other}: " + ", ".join(parts))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="b0", help="b0 ... b7")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, help="default: the model's own")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=tuple(DTYPES),
                   help="default: bf16 autocast on cuda, fp32 on cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="default: on for cuda, off for cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.channels_last = cuda if args.channels_last is None else args.channels_last
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads")
    print(f"effscale {effscale.__version__}, torch {torch.__version__}, {device_name}; "
          f"{args.model} at {args.resolution or effscale.model_spec(args.model).resolution} px, "
          f"batch {args.batch}, {args.precision}, channels_last={args.channels_last}, "
          f"{args.rounds} rounds x {args.steps} steps, drop_path {DROP_PATH}, SGD momentum")
    results = run(args)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
