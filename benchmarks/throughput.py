"""Training and inference throughput and peak memory: effscale vs timm vs torchvision.

Same variant, batch, resolution, precision and device for all three, in one process, measured
interleaved (effscale, timm, torchvision, effscale, ... for --rounds rounds) so that drift in
clocks or in other processes' load hits every library alike. Reports per-library medians and
the ratios effscale/timm and effscale/torchvision. A benchmark, not a test: nothing asserts.

    python benchmarks/throughput.py --model b0 --batch 32 --device cpu --rounds 5
    python benchmarks/throughput.py --model b0 --resolution 224 --precision bf16 --channels-last \
        --batch 128 256 --device cuda --rounds 5 --warmup 3 --steps 5 --max-seconds 30 \
        --json results/throughput.json

Several --batch values are measured one after another with the same models (one table
each). --max-seconds bounds the whole call, imports included, softly: each batch gets an
equal share of what is left and stops adding rounds when its share is spent; the warm-up
round, one counted round and one memory pass always run, and a later batch whose share is
nothing is skipped. A library that fails to build or to run a configuration (not installed,
out of memory) is reported as an error for that configuration and the others go on. --json
writes every number (per-round img/s, medians, peaks, ratios, errors) with the GPU name,
torch version and date; it is rewritten after each batch so a killed run keeps its data.

Peak memory: on CUDA torch.cuda.max_memory_allocated above what was allocated before the
measurement; on Linux CPU the peak resident set size above the RSS before it (VmHWM, reset
through /proc/self/clear_refs, with glibc told to return large blocks to the OS at once so
that memory freed by an earlier measurement does not hide this one's); elsewhere n/a.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # --max-seconds counts from here, imports included

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

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


def images_per_s(step, batch: int, setup: Setup, warmup: int = 1) -> float:
    for _ in range(warmup):  # warm-up: allocator, kernels, lazy optimizer state
        step()
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


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _recover(device: torch.device) -> None:
    """After a failed step (out of memory above all): drop what it left and the cached blocks."""
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        torch.cuda.empty_cache()


def build_candidates(args, device: torch.device) -> tuple[list[Candidate], dict[str, str]]:
    """Every library's model and optimizer; a library that cannot be built (not installed, no
    such variant) is left out with its error, and the others are still measured."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    candidates, errors = [], {}
    for name in args.libraries:
        try:
            torch.manual_seed(0)
            model = build(name, args.model, 1000).to(device, memory_format=memory_format)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
            candidates.append(Candidate(name, model, optimizer, scaler))
        except Exception as exc:  # noqa: BLE001  (a benchmark reports, it does not stop)
            errors[name] = _error(exc)
            print(f"{name}: not measured, {errors[name]}", flush=True)
            _recover(device)
    return candidates, errors


def run(args, batch: int | None = None, candidates: list[Candidate] | None = None,
        seconds: float | None = None) -> dict[str, dict]:
    """One configuration (one batch): per library {"train": [img/s per counted round],
    "infer": [...], "train_mem": bytes, "infer_mem": bytes, "error": str or None}.
    `seconds`, if given, stops adding rounds once spent (after at least one counted round)."""
    device = torch.device(args.device)
    batch = batch if batch is not None else (args.batch[0] if isinstance(args.batch, list)
                                             else args.batch)
    setup = Setup(device, DTYPES[args.precision], args.channels_last, args.steps)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    resolution = args.resolution or effscale.model_spec(args.model).resolution
    warmup = getattr(args, "warmup", 1)
    if candidates is None:
        candidates, _ = build_candidates(args, device)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen)
    x = x.to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)

    results = {c.name: {"train": [], "infer": [], "train_mem": None, "infer_mem": None,
                        "error": None} for c in candidates}
    alive = list(candidates)

    def measure(c: Candidate, kind: str, fn) -> float | None:
        """fn's value, or None with the library's error recorded (and it is dropped)."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            results[c.name]["error"] = f"{kind}: {_error(exc)}"
            print(f"{c.name}: {results[c.name]['error']}", flush=True)
            if c in alive:
                alive.remove(c)
            _recover(device)
            return None

    # Round 0 is a warm-up and is not counted: whoever runs first would otherwise pay for
    # process-wide first-use costs (thread pool, kernel caches) alone.
    round_seconds = 0.0
    for round_ in range(args.rounds + 1):
        # Another round, then the memory passes (about one round's cost), must fit the share.
        if (round_ >= 2 and seconds is not None
                and time.perf_counter() - start + 2 * round_seconds > seconds):
            print(f"time share of {seconds:.1f} s spent: stopping after {round_ - 1} counted "
                  f"round(s) of {args.rounds}", flush=True)
            break
        round_start = time.perf_counter()
        for kind in ("train", "infer"):
            for c in list(alive):  # interleaved: A B C, A B C, ...
                step = ((lambda: train_step(c, x, y, setup)) if kind == "train"
                        else (lambda: infer_step(c, x, setup)))
                value = measure(c, kind, lambda: images_per_s(step, batch, setup, warmup))
                if value is not None:
                    results[c.name][kind].append(value)
        round_seconds = time.perf_counter() - round_start
        if not alive:
            break
        label = f"round {round_}/{args.rounds}" if round_ else "warm-up round (not counted)"
        print(f"{label}: " + ", ".join(
            f"{c.name} {results[c.name]['train'][-1]:.1f}/{results[c.name]['infer'][-1]:.1f}"
            for c in alive) + " img/s (train/infer)", flush=True)
    for r in results.values():
        r["train"], r["infer"] = r["train"][1:], r["infer"][1:]

    # Memory last, in its own passes: on CPU its allocator settings (every large block mapped
    # and unmapped on its own) cost system time that must not slow the timed rounds. Two
    # passes in opposite orders, keeping each library's smaller peak, so that no library is
    # charged for allocations an earlier one left behind.
    memory = PeakMemory(device)
    over = seconds is not None and time.perf_counter() - start > seconds
    for c in alive + ([] if over else alive[::-1]):  # one pass only when out of time
        r = results[c.name]
        for kind, step in (("train_mem", lambda: train_step(c, x, y, setup)),
                           ("infer_mem", lambda: infer_step(c, x, setup))):
            peak = measure(c, kind, lambda: peak_bytes(step, memory))
            if peak is not None:
                r[kind] = peak if r.get(kind) is None else min(r[kind], peak)
            if c not in alive:
                break
    del x, y
    _recover(device)
    return results


# ---- reporting -------------------------------------------------------------------------------

def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of (ours / theirs) within a round: measurements taken seconds apart
    share the machine's load, so pairing them cancels most of the drift between rounds."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def _measured(r: dict | None) -> bool:
    return bool(r) and bool(r.get("train")) and bool(r.get("infer"))


def ratios(results: dict) -> dict[str, dict[str, float]]:
    """effscale/other per kind: the paired median ratio and the ratio of the medians."""
    out = {}
    ours = results.get("effscale")
    for other in ("timm", "torchvision"):
        theirs = results.get(other)
        if not (_measured(ours) and _measured(theirs)):
            continue
        out[f"effscale/{other}"] = {
            kind: {"paired": _paired_ratio(ours[kind], theirs[kind]),
                   "of_medians": statistics.median(ours[kind]) / statistics.median(theirs[kind])}
            for kind in ("train", "infer")
            if len(ours[kind]) == len(theirs[kind])}
    return out


def report(results: dict) -> str:
    lines = ["| library | train img/s median | train min-max | infer img/s median | "
             "infer min-max | train peak MiB | infer peak MiB |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not _measured(r):
            lines.append(f"| {name} | error: {(r or {}).get('error') or 'no counted round'} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {name} | {statistics.median(r['train']):.1f} | {min(r['train']):.1f}-"
            f"{max(r['train']):.1f} | {statistics.median(r['infer']):.1f} | "
            f"{min(r['infer']):.1f}-{max(r['infer']):.1f} | {_mib(r.get('train_mem'))} | "
            f"{_mib(r.get('infer_mem'))} |" + (f" (later: {r['error']})" if r.get("error") else ""))
    lines += ["", "ratios: median of per-round ratios (ratio of the medians in brackets)"]
    for pair, kinds in ratios(results).items():
        parts = [f"{kind} {v['paired']:.3f}x ({v['of_medians']:.3f}x)" for kind, v in kinds.items()]
        lines.append(f"{pair}: " + ", ".join(parts))
    return "\n".join(lines)


def config_record(batch: int, resolution: int, args, results: dict | None, seconds: float,
                  error: str | None = None) -> dict:
    libraries = {}
    for name, r in (results or {}).items():
        entry = dict(r)
        for kind in ("train", "infer"):
            entry[f"{kind}_median"] = statistics.median(r[kind]) if r.get(kind) else None
        libraries[name] = entry
    return dict(model=args.model, resolution=resolution, batch=batch, precision=args.precision,
                channels_last=args.channels_last, rounds=args.rounds, steps=args.steps,
                warmup=args.warmup, counted_rounds=max((len(r.get("train", []))
                                                        for r in (results or {}).values()),
                                                       default=0),
                seconds=round(seconds, 2), libraries=libraries,
                ratios=ratios(results) if results else {}, error=error)


def device_name(args) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def metadata(args) -> dict:
    meta = dict(script="benchmarks/throughput.py", argv=sys.argv[1:],
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=args.device, device_name=device_name(args), torch=torch.__version__,
                effscale=getattr(effscale, "__version__", None), python=platform.python_version(),
                drop_path=DROP_PATH, optimizer="SGD momentum 0.9, lr 1e-3",
                max_seconds=args.max_seconds)
    for lib in ("timm", "torchvision"):
        with contextlib.suppress(Exception):
            meta[lib] = __import__(lib).__version__
    if args.device == "cuda":
        meta.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory
                                         / 2**30, 1))
    return meta


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    try:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(target)
    except OSError as exc:
        print(f"could not write {path}: {exc}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="b0", help="b0 ... b7")
    p.add_argument("--batch", type=int, nargs="+", default=[32],
                   help="one or more batch sizes, measured one after another")
    p.add_argument("--resolution", type=int, help="default: the model's own")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=tuple(DTYPES),
                   help="default: bf16 autocast on cuda, fp32 on cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="default: on for cuda, off for cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps before each measurement (default 1)")
    p.add_argument("--max-seconds", type=float,
                   help="wall-time bound for the whole call (models, rounds, memory); "
                        "default: none")
    p.add_argument("--libraries", default=",".join(LIBRARIES),
                   help=f"comma list, default {','.join(LIBRARIES)}")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    args.libraries = [n.strip() for n in args.libraries.split(",") if n.strip()]
    unknown = set(args.libraries) - set(LIBRARIES)
    if unknown or not args.libraries:
        p.error(f"--libraries: choose from {', '.join(LIBRARIES)}")
    if min(args.batch) < 1 or args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch, --rounds and --steps must be >= 1, --warmup >= 0")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.channels_last = cuda if args.channels_last is None else args.channels_last
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    t0 = T_START if argv is None else time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    resolution = args.resolution or effscale.model_spec(args.model).resolution
    print(f"effscale {effscale.__version__}, torch {torch.__version__}, {device_name(args)}; "
          f"{args.model} at {resolution} px, batch {' '.join(map(str, args.batch))}, "
          f"{args.precision}, channels_last={args.channels_last}, {args.rounds} rounds x "
          f"{args.steps} steps after {args.warmup} warm-up step(s), drop_path {DROP_PATH}, "
          f"SGD momentum" + (f", at most {args.max_seconds:g} s" if args.max_seconds else ""),
          flush=True)
    payload = dict(meta=metadata(args), configs=[], build_errors={})
    candidates, payload["build_errors"] = build_candidates(args, device)
    write_json(args.json, payload)
    tables = []
    for i, batch in enumerate(args.batch):
        share = None
        if args.max_seconds is not None:
            share = max(0.0, (args.max_seconds - (time.perf_counter() - t0))
                        / (len(args.batch) - i))
        if len(args.batch) > 1:
            print(f"\n-- batch {batch}" + (f" (time share {share:.1f} s)" if share is not None
                                           else ""), flush=True)
        start = time.perf_counter()
        results, error = None, None
        if not candidates:
            error = "no library could be built"
        elif share is not None and share <= 0 and i > 0:
            error = f"skipped: --max-seconds {args.max_seconds:g} spent"
            print(error, flush=True)
        else:
            try:
                results = run(args, batch, candidates, share)
            except Exception as exc:  # noqa: BLE001
                error = _error(exc)
                print(f"batch {batch}: {error}", flush=True)
                _recover(device)
        for name, err in payload["build_errors"].items():
            (results := results or {})[name] = dict(train=[], infer=[], train_mem=None,
                                                    infer_mem=None, error=f"build: {err}")
        payload["configs"].append(config_record(batch, resolution, args, results,
                                                time.perf_counter() - start, error))
        payload["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 2)
        write_json(args.json, payload)
        tables.append((batch, results, error))
    for batch, results, error in tables:
        print()
        if len(tables) > 1:
            print(f"batch {batch}, {resolution} px, {args.precision}, "
                  f"channels_last={args.channels_last}:")
        print(report(results) if results else f"error: {error}")
    print(f"\n{time.perf_counter() - t0:.1f} s" + (f"; JSON in {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
