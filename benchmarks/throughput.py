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


def train_images_per_s(c: Candidate, x, y, setup: Setup) -> float:
    c.model.train()

    def step():
        with setup.autocast():
            loss = F.cross_entropy(c.model(x), y)
        c.optimizer.zero_grad(set_to_none=True)
        c.scaler.scale(loss).backward()
        c.scaler.step(c.optimizer)
        c.scaler.update()

    step()  # warm-up: allocator, kernels, lazy optimizer state
    setup.sync()
    start = time.perf_counter()
    for _ in range(setup.steps):
        step()
    setup.sync()
    return setup.steps * x.shape[0] / (time.perf_counter() - start)


def infer_images_per_s(c: Candidate, x, setup: Setup) -> float:
    c.model.eval()
    with torch.inference_mode(), setup.autocast():
        c.model(x)
        setup.sync()
        start = time.perf_counter()
        for _ in range(setup.steps):
            c.model(x)
        setup.sync()
    return setup.steps * x.shape[0] / (time.perf_counter() - start)


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

    memory = PeakMemory(device)
    results = {c.name: {"train": [], "infer": [], "train_mem": [], "infer_mem": []}
               for c in candidates}
    for round_ in range(args.rounds):
        for c in candidates:  # interleaved: A B C, A B C, ...
            memory.start()
            results[c.name]["train"].append(train_images_per_s(c, x, y, setup))
            results[c.name]["train_mem"].append(memory.peak())
        for c in candidates:
            memory.start()
            results[c.name]["infer"].append(infer_images_per_s(c, x, setup))
            results[c.name]["infer_mem"].append(memory.peak())
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{c.name} {results[c.name]['train'][-1]:.1f}/{results[c.name]['infer'][-1]:.1f}"
            for c in candidates) + " img/s (train/infer)", flush=True)
    return results


# ---- reporting -------------------------------------------------------------------------------

def _mib(values: list) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known) / 2**20:.0f}" if known else "n/a"


def report(results: dict, args) -> str:
    lines = ["| library | train img/s (median) | train min-max | infer img/s (median) | "
             "infer min-max | train peak MiB | infer peak MiB |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {statistics.median(r['train']):.1f} | {min(r['train']):.1f}-"
            f"{max(r['train']):.1f} | {statistics.median(r['infer']):.1f} | "
            f"{min(r['infer']):.1f}-{max(r['infer']):.1f} | {_mib(r['train_mem'])} | "
            f"{_mib(r['infer_mem'])} |")
    ours = results["effscale"]
    lines.append("")
    for other in ("timm", "torchvision"):
        ratios = [f"{kind} {statistics.median(ours[kind]) / statistics.median(results[other][kind]):.3f}x"
                  for kind in ("train", "infer")]
        lines.append(f"effscale/{other}: " + ", ".join(ratios))
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
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
