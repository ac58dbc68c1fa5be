"""Tiny models fast on a GPU: training-step throughput of the Fashion-MNIST study's models.

The study trains 0.25-1.3 M-parameter EfficientNets at 36-95 px (1 channel, 10 classes,
stem stride 2). Models that small leave a big GPU idle while Python launches kernels, so this
script measures what each lever buys, in train images/s on synthetic data already on the
device (no data loading):

    baseline  bf16 autocast (fp32 on CPU, as the engine; --baseline-precision), channels_last,
              eager, loss.item() every step (what effscale's engine does: it logs the loss
              each step), no EMA
    fp32      baseline without autocast                  (bf16 vs fp32; skipped when the
              baseline is fp32 already)
    nchw      baseline in the default NCHW layout         (channels_last vs not)
    nosync    baseline without the per-step loss.item()   (lets the CPU run ahead)
    ema       baseline plus effscale's ModelEma(0.999) update each step (the fast recipe's)
    graph     baseline with the whole step (forward, loss, backward, SGD step) captured in
              one CUDA graph by hand (torch.cuda.graph) and replayed; CUDA only
    compile   baseline with torch.compile(model, mode="reduce-overhead") (inductor + CUDA
              graphs). Compiled in a child process started at the beginning, so it compiles
              while the other rows are measured (bounded by --max-seconds, killed if not
              ready); its timed steps run alone, between two rows. Compile time is reported
              on its own. One row: the first model at the first primary batch. On CPU only
              when named in --levers.

A training step: zero_grad, forward (under autocast for bf16), cross-entropy with label
smoothing 0.1, backward, SGD (momentum 0.95, Nesterov, foreach, weight decay 5e-5 on weights
only), drop path 0.1: the fast recipe's. cudnn.benchmark is on for CUDA, as in the engine.
Each row: a fresh model, --warmup untimed steps, then --rounds rounds of at most --steps steps
(a round also ends after --round-seconds), synchronized around each round; img/s is the
median over rounds. Peak memory is torch.cuda.max_memory_allocated over the row (CUDA only).

Order (the most informative rows first; rows that no longer fit in --max-seconds are
skipped and listed): baseline for every model at the primary batches (128 and 512, or the
first two of --batches); graph for every model there; the other levers for two models (the
first and the highest-resolution one) there; the compile row when ready; then the remaining
batches in the same order.

    PYTHONPATH=src python benchmarks/gpu_tiny.py --device cuda --max-seconds 70 \\
        --json results/gpu_tiny.json
    python benchmarks/gpu_tiny.py --device cpu --batches 8 --max-seconds 20   # a dry run

A benchmark, not a test: nothing asserts, and a configuration that fails (out of memory, a
capture or compile error) becomes an error row while the script goes on.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # --max-seconds counts from here, imports included

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections import deque  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import effscale  # noqa: E402  (the checkout's, also when not installed)
from throughput import write_json  # noqa: E402  (the sibling benchmark's)

MODELS = {  # the Fashion-MNIST study's five
    "baseline": "b0@res=36,phi=-10",
    "depth": "b0@d=9.29,res=36,phi=-10",
    "width": "b0@w=2.3,res=36,phi=-10",
    "resolution": "b0@res=95,phi=-10",
    "compound": "b0@r=0.650176,phi=-6.16",
}
FALLBACK = {"b0@r=0.650176,phi=-6.16": "b0@phi=-6.16,res=62"}  # if the first does not parse

LEVERS = {
    "baseline": dict(channels_last=True, mode="eager", sync=True, ema=False),  # + BASE
    "fp32": dict(precision="fp32"),
    "nchw": dict(channels_last=False),
    "nosync": dict(sync=False),
    "ema": dict(ema=True),
    "graph": dict(mode="graph"),
    "compile": dict(mode="compile"),
}
SIDE_LEVERS = ("nosync", "fp32", "nchw", "ema")  # on two models only
DEFAULT_BATCHES = (128, 256, 512, 1024)
PRIMARY_BATCHES = (128, 512)

NUM_CLASSES, LABEL_SMOOTHING, DROP_PATH = 10, 0.1, 0.1
LR, MOMENTUM, WEIGHT_DECAY, EMA_DECAY = 0.2, 0.95, 5e-5, 0.999


BASE = dict(precision="bf16")  # the baseline's precision; main() sets it for the device


def lever_settings(lever: str) -> dict:
    return {**BASE, **LEVERS["baseline"], **LEVERS[lever]}


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


# ---- one training step -----------------------------------------------------------------------

def build(name: str, device: torch.device, channels_last: bool, in_chans: int,
          stem_stride: int):
    torch.manual_seed(0)
    model = effscale.create_model(name, NUM_CLASSES, in_chans=in_chans, stem_stride=stem_stride,
                                  drop_path_rate=DROP_PATH)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([dict(params=decay, weight_decay=WEIGHT_DECAY),
                                 dict(params=no_decay, weight_decay=0.0)],
                                lr=LR, momentum=MOMENTUM, nesterov=True, foreach=True)
    return model, optimizer


def synthetic(batch: int, in_chans: int, resolution: int, device: torch.device,
              channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_chans, resolution, resolution, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    return x, y


def autocast(device: torch.device, precision: str, cache: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def eager_step(model, optimizer, x, y, device, s: dict, ema=None, before_forward=None):
    """effscale's engine order: gradients, the loss read back (sync), the update, the EMA."""
    def step():
        if before_forward is not None:
            before_forward()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, s["precision"]):
            loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
        loss.backward()
        if s["sync"]:
            loss.item()
        optimizer.step()
        if ema is not None:
            ema.update(model)
    return step


def graph_step(model, optimizer, x, y, device, s: dict, warmup: int):
    """The whole step captured once in a CUDA graph (torch.cuda.graph, the pattern of the
    PyTorch docs' "whole network capture"): warm-up on a side stream (cuDNN autotuning,
    SGD's momentum buffers), capture with autocast's weight cache off, then replay. The
    learning rate and momentum are baked into the graph, fine for a throughput measurement
    (a real loop would pass them as device tensors)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, s["precision"], cache=False):
                loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
            loss.backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool
    with torch.cuda.graph(graph):
        with autocast(device, s["precision"], cache=False):
            static_loss = F.cross_entropy(model(x), y, label_smoothing=LABEL_SMOOTHING)
        static_loss.backward()
        optimizer.step()

    def step():
        graph.replay()
        if s["sync"]:
            static_loss.item()
    return step, graph


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(step, *, batch: int, device, rounds: int, steps: int, round_seconds: float,
                 deadline: float) -> list[float]:
    """img/s of each round: at most `steps` steps, fewer once `round_seconds` have passed
    (by the CPU's clock; the rate uses the synchronized time). At least one round; no new
    round after `deadline`."""
    values = []
    for r in range(rounds):
        if r and time.perf_counter() > deadline:
            break
        sync(device)
        start = time.perf_counter()
        n = 0
        while n < steps:
            step()
            n += 1
            if time.perf_counter() - start > round_seconds:
                break
        sync(device)
        values.append(n * batch / (time.perf_counter() - start))
    return values


# ---- rows ------------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    batch: int
    lever: str
    phase: int
    role: str = ""             # baseline / depth / ... when a default model
    status: str = "pending"    # ok / error / skipped
    reason: str | None = None  # the error, or why skipped
    params: int | None = None
    resolution: int | None = None
    img_s: float | None = None
    img_s_rounds: list[float] = field(default_factory=list)
    ms_per_step: float | None = None
    setup_s: float | None = None   # warm-up (+ capture for graph, + compile for compile)
    compile_s: float | None = None
    peak_mib: float | None = None
    row_s: float | None = None
    compiling_alongside: bool = False  # the compile child was compiling during this row
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.role or self.model} b{self.batch} {self.lever}"


def plan_rows(models: list[tuple[str, str]], batches: list[int], levers: list[str],
              side_models: list[str]) -> list[Row]:
    primary = [b for b in batches if b in PRIMARY_BATCHES] or batches[:2]
    rest = [b for b in batches if b not in primary]
    rows: list[Row] = []

    def add(phase, lever, names, batch_list):
        if lever not in levers:
            return
        for batch in batch_list:
            for role, name in models:
                if name in names:
                    rows.append(Row(name, batch, lever, phase, role))

    names = [n for _, n in models]
    for phase, batch_list in ((1, primary), (4, rest)):
        add(phase, "baseline", names, batch_list)
        add(phase + 1, "graph", names, batch_list)
        for lever in SIDE_LEVERS:
            add(phase + 2, lever, side_models, batch_list)
    # Ordered by phase: 1 baseline, 2 graph, 3 side levers at the primary batches; 4-6 the rest.
    rows.sort(key=lambda r: r.phase)
    if "compile" in levers and models and primary:
        rows.append(Row(models[0][1], primary[0], "compile", 3, models[0][0]))
    return rows


def measure_row(row: Row, args, device: torch.device, deadline: float) -> None:
    s = lever_settings(row.lever)
    row.settings = s
    t0 = time.perf_counter()
    model, optimizer = build(row.model, device, s["channels_last"], args.in_chans,
                             args.stem_stride)
    row.params = sum(p.numel() for p in model.parameters())
    row.resolution = model.resolution
    x, y = synthetic(row.batch, args.in_chans, model.resolution, device, s["channels_last"])
    graph = ema = step = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        if s["mode"] == "graph":
            step, graph = graph_step(model, optimizer, x, y, device, s, args.warmup)
            step()  # first replay
        else:
            if s["ema"]:
                from effscale.training.ema import ModelEma
                ema = ModelEma(model, EMA_DECAY)
            step = eager_step(model, optimizer, x, y, device, s, ema)
            for i in range(args.warmup):
                if i and time.perf_counter() > deadline:
                    break
                step()
        sync(device)
        row.setup_s = time.perf_counter() - t0
        values = timed_rounds(step, batch=row.batch, device=device, rounds=args.rounds,
                              steps=args.steps, round_seconds=args.round_seconds,
                              deadline=deadline)
        row.img_s_rounds = values
        row.img_s = statistics.median(values)
        row.ms_per_step = 1000 * row.batch / row.img_s
        if device.type == "cuda":
            row.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        row.status = "ok"
    finally:
        del model, optimizer, x, y, graph, ema, step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---- the compile child -----------------------------------------------------------------------

def compile_worker(spec: dict) -> int:
    """Child process: compile, warm up, say READY, wait for GO, time, say RESULT."""
    def say(kind, payload):
        print(f"@@{kind} {json.dumps(payload)}", flush=True)

    _die_with_parent(spec["parent"])
    try:
        device = torch.device(spec["device"])
        BASE["precision"] = spec["precision"]
        s = lever_settings("baseline")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        with contextlib.suppress(Exception):
            import torch._inductor.config as inductor_config
            inductor_config.compile_threads = spec["compile_threads"]
        model, optimizer = build(spec["model"], device, s["channels_last"], spec["in_chans"],
                                 spec["stem_stride"])
        params = sum(p.numel() for p in model.parameters())
        x, y = synthetic(spec["batch"], spec["in_chans"], model.resolution, device,
                         s["channels_last"])
        if spec["backend"] == "inductor":
            mode = spec["mode"] if device.type == "cuda" else "default"
            compiled = torch.compile(model, mode=mode, dynamic=False)
        else:  # e.g. "eager": tests this machinery without inductor's compile time
            mode = f"backend={spec['backend']}"
            compiled = torch.compile(model, backend=spec["backend"], dynamic=False)
        mark = (torch.compiler.cudagraph_mark_step_begin
                if device.type == "cuda" and "overhead" in mode else None)
        step = eager_step(compiled, optimizer, x, y, device, s, before_forward=mark)
        t0 = time.perf_counter()
        step()  # dynamo + inductor compile forward and backward
        sync(device)
        compile_s = time.perf_counter() - t0
        for _ in range(max(spec["warmup"], 2)):  # CUDA graph recording, then steady state
            step()
        sync(device)
        setup_s = time.perf_counter() - t0
        say("READY", dict(compile_s=compile_s, setup_s=setup_s, mode=mode))
        line = sys.stdin.readline()
        if not line.startswith("GO"):
            return 0
        seconds = float(line.split()[1]) if len(line.split()) > 1 else 5.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        values = timed_rounds(step, batch=spec["batch"], device=device, rounds=spec["rounds"],
                              steps=spec["steps"], round_seconds=spec["round_seconds"],
                              deadline=time.perf_counter() + seconds)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        say("RESULT", dict(img_s_rounds=values, compile_s=compile_s, setup_s=setup_s,
                           params=params, resolution=model.resolution, peak_mib=peak,
                           mode=mode))
    except Exception as exc:  # noqa: BLE001
        say("ERROR", dict(error=_error(exc)))
    return 0


class CompileChild:
    """The parent's handle on the compile child: started early, polled between rows."""

    def __init__(self, row: Row, args, device: torch.device):
        self.row = row
        self.started = time.perf_counter()
        self.lines: queue.Queue = queue.Queue()
        self.stderr: deque = deque(maxlen=40)
        self.ready: dict | None = None
        self.done = False
        self.cudagraphs_skipped: str | None = None  # inductor's "skipping cudagraphs due to ..."
        threads = max(1, min(4, (os.cpu_count() or 2) // 4))
        spec = dict(device=args.device, model=row.model, batch=row.batch, in_chans=args.in_chans,
                    stem_stride=args.stem_stride, mode=args.compile_mode, warmup=args.warmup,
                    backend=args.compile_backend, parent=os.getpid(),
                    rounds=args.rounds, steps=args.steps, round_seconds=args.round_seconds,
                    compile_threads=threads, precision=BASE["precision"])
        env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--compile-worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_stdout):
        for line in stream:
            if is_stdout and line.startswith("@@"):
                self.lines.put(line)
            else:
                self.stderr.append(line.rstrip())
                if "skipping cudagraphs" in line.lower() and self.cudagraphs_skipped is None:
                    self.cudagraphs_skipped = line.strip()[-200:]
        if is_stdout:
            self.lines.put("@@EOF {}")

    def _next(self, timeout: float) -> tuple[str, dict] | None:
        try:
            line = self.lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        kind, _, payload = line[2:].partition(" ")
        try:
            return kind, json.loads(payload or "{}")
        except json.JSONDecodeError:
            return kind, {}

    @property
    def compiling(self) -> bool:
        return not self.done and self.ready is None

    def poll(self, wait: float = 0.0) -> None:
        """Take READY (or a failure) if it has come, waiting up to `wait` s for it."""
        if self.done or self.ready is not None:
            return
        message = self._next(wait)
        if message is None:
            return
        kind, payload = message
        if kind == "READY":
            self.ready = payload
        else:
            self._fail(payload.get("error") or self._stderr_tail("child exited"))

    def run_timed(self, seconds: float) -> None:
        """Let the ready child time its steps alone (the parent waits), and take the row."""
        row = self.row
        try:
            self.proc.stdin.write(f"GO {seconds:.1f}\n")
            self.proc.stdin.flush()
        except OSError as exc:
            return self._fail(_error(exc))
        message = self._next(seconds + 20)
        if message is None:
            return self._fail(f"no result within {seconds + 20:.0f} s of GO")
        kind, payload = message
        if kind != "RESULT":
            return self._fail(payload.get("error") or self._stderr_tail("child exited"))
        row.img_s_rounds = payload["img_s_rounds"]
        row.img_s = statistics.median(row.img_s_rounds)
        row.ms_per_step = 1000 * row.batch / row.img_s
        row.compile_s, row.setup_s = payload["compile_s"], payload["setup_s"]
        row.params, row.resolution = payload["params"], payload["resolution"]
        row.peak_mib = payload["peak_mib"]
        row.settings = dict(lever_settings("compile"), compile_mode=payload["mode"])
        row.status = "ok"
        row.reason = "compiled in a child process while other rows ran"
        if self.cudagraphs_skipped:
            row.reason += f"; inductor: {self.cudagraphs_skipped}"
        self.close()

    def _stderr_tail(self, what: str) -> str:
        tail = [line for line in self.stderr if line.strip()][-3:]
        return what + (": " + " | ".join(tail)[-400:] if tail else "")

    def _fail(self, reason: str) -> None:
        self.row.status, self.row.reason = "error", reason
        self.close(kill=True)

    def expire(self) -> None:
        if self.done:
            return
        waited = time.perf_counter() - self.started
        if self.ready is None:
            self._fail(f"compile not finished {waited:.0f} s after the child started (time "
                       f"budget or interrupted); compile_s > {waited:.0f}")
        else:
            self.row.status = "skipped"
            self.row.reason = (f"compiled in {self.ready['compile_s']:.1f} s, but no time left "
                               "to time it")
            self.row.compile_s = self.ready["compile_s"]
            self.close()

    def close(self, kill: bool = False) -> None:
        """Stdin closed lets a waiting child exit; a compiling one (or `kill`) is killed."""
        self.done = True
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=0.1 if kill or self.ready is None else 3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=3)


def _die_with_parent(parent: int) -> None:
    """In the child: be SIGKILLed when the parent dies (an outer timeout killed it), so no
    orphan keeps compiling on the machine; exit now if that has already happened."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


# ---- reporting -------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    base = {(r.model, r.batch): r.img_s for r in rows if r.lever == "baseline" and r.img_s}
    lines = ["| model | params M | px | batch | lever | train img/s | rounds min-max | ms/step | "
             "vs baseline | setup s | peak MiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.status == "skipped":
            continue
        name = f"{r.role}: `{r.model}`" if r.role else f"`{r.model}`"
        params = f"{r.params / 1e6:.2f}" if r.params else ""
        if r.status != "ok":
            lines.append(f"| {name} | {params} | {r.resolution or ''} | {r.batch} | {r.lever} "
                         f"| error | | | | | | {r.reason} |")
            continue
        ratio = base.get((r.model, r.batch))
        setup = f"{r.setup_s:.1f}" if r.setup_s is not None else ""
        if r.compile_s is not None:
            setup += f" (compile {r.compile_s:.1f})"
        notes = [n for n in (r.reason if r.lever == "compile" else None,
                             "compile child was compiling" if r.compiling_alongside else None)
                 if n]
        lines.append(
            f"| {name} | {params} | {r.resolution} | {r.batch} | {r.lever} | {r.img_s:,.0f} | "
            f"{min(r.img_s_rounds):,.0f}-{max(r.img_s_rounds):,.0f} | {r.ms_per_step:.2f} | "
            f"{f'{r.img_s / ratio:.2f}x' if ratio else ''} | {setup} | "
            f"{f'{r.peak_mib:.0f}' if r.peak_mib is not None else 'n/a'} | {'; '.join(notes)} |")
    return "\n".join(lines)


def skipped_summary(rows: list[Row]) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r.status in ("skipped", "pending"):
            by_reason.setdefault(r.reason or "not run", []).append(r.label)
    return [f"skipped ({reason}): {len(labels)} row(s): {', '.join(labels)}"
            for reason, labels in by_reason.items()]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


# ---- main ------------------------------------------------------------------------------------

def resolve_models(text: list[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """(role, name) pairs and notes. Names contain commas (b0@res=36,phi=-10), so a comma
    list is split into names where a piece starts a new name (has '@' or no '='); roles
    (baseline, depth, width, resolution, compound) stand for the study's names."""
    pieces = [p.strip() for arg in (text or [",".join(MODELS)]) for p in arg.split(",")]
    names: list[str] = []
    for piece in filter(None, pieces):
        if names and "=" in piece and "@" not in piece:
            names[-1] += "," + piece
        else:
            names.append(piece)
    out, notes = [], []
    roles = {v: k for k, v in MODELS.items()}
    for name in names:
        name = MODELS.get(name, name)
        try:
            effscale.model_spec(name)
        except ValueError as exc:
            if name in FALLBACK:
                notes.append(f"{name!r} does not parse ({exc}); using {FALLBACK[name]!r}")
                roles[FALLBACK[name]] = roles.get(name, "")
                name = FALLBACK[name]
            else:
                notes.append(f"{name!r}: {exc} (its rows will be errors)")
        out.append((roles.get(name, ""), name))
    return out, notes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", help="comma list of names or roles (baseline, depth, "
                   "width, resolution, compound); default the study's five")
    p.add_argument("--batches", type=lambda t: [int(v) for v in t.split(",") if v.strip()],
                   default=list(DEFAULT_BATCHES), help="comma list, default 128,256,512,1024")
    p.add_argument("--levers", default=None,
                   help=f"comma list from {','.join(LEVERS)}; default all (graph and compile "
                        "only on cuda)")
    p.add_argument("--max-seconds", type=float, default=75.0,
                   help="wall-time bound for the whole script, imports included (default 75)")
    p.add_argument("--baseline-precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on cuda, fp32 on cpu (the engine's defaults)")
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="at most this many steps per round")
    p.add_argument("--round-seconds", type=float, default=0.25,
                   help="a round also ends after this long")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   help="torch.compile mode for the compile lever (inductor backend)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend; 'eager' checks the machinery quickly")
    p.add_argument("--json", metavar="PATH", help="also write every row as JSON (rewritten "
                   "after each row)")
    p.add_argument("--compile-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_worker:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if not args.batches or min(args.batches) < 1:
        p.error("--batches needs positive integers")
    if min(args.warmup, args.rounds - 1, args.steps - 1) < 0:
        p.error("--warmup >= 0, --rounds and --steps >= 1")
    named = args.levers is not None
    args.levers = ([v.strip() for v in args.levers.split(",") if v.strip()] if named
                   else list(LEVERS))
    unknown = set(args.levers) - set(LEVERS)
    if unknown:
        p.error(f"unknown lever(s) {', '.join(sorted(unknown))}; choose from {', '.join(LEVERS)}")
    args.levers_named = named
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compile_worker:
        return compile_worker(json.loads(args.compile_worker))
    deadline = T_START + args.max_seconds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as effscale's engine
    BASE["precision"] = (args.baseline_precision if args.baseline_precision != "auto"
                         else "bf16" if device.type == "cuda" else "fp32")
    models, notes = resolve_models(args.models)
    by_res = sorted(models, key=lambda m: -_resolution(m[1]))
    side = list(dict.fromkeys([models[0][1], by_res[0][1]])) if models else []
    rows = plan_rows(models, args.batches, args.levers, side)

    # Levers that cannot run here are skipped with their reason, up front.
    for r in rows:
        if r.lever == "graph" and device.type != "cuda":
            r.status, r.reason = "skipped", "CUDA graphs need a CUDA device"
        if r.lever == "fp32" and BASE["precision"] == "fp32":
            r.status, r.reason = "skipped", "the baseline is fp32 already"
        if r.lever == "compile" and device.type != "cuda" and not args.levers_named:
            r.status, r.reason = ("skipped", "compile runs on CPU only when named in --levers "
                                  "(slow to compile)")

    meta = dict(script="benchmarks/gpu_tiny.py", argv=sys.argv[1:] if argv is None else argv,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=args.device, device_name=device_name(device), torch=torch.__version__,
                effscale=getattr(effscale, "__version__", None),
                python=platform.python_version(), max_seconds=args.max_seconds,
                levers={k: lever_settings(k) for k in LEVERS}, side_models=side,
                step=dict(optimizer="SGD", lr=LR, momentum=MOMENTUM, nesterov=True,
                          foreach=True, weight_decay=WEIGHT_DECAY,
                          label_smoothing=LABEL_SMOOTHING, drop_path=DROP_PATH,
                          num_classes=NUM_CLASSES, in_chans=args.in_chans,
                          stem_stride=args.stem_stride, ema_decay=EMA_DECAY),
                timing=dict(warmup=args.warmup, rounds=args.rounds, steps=args.steps,
                            round_seconds=args.round_seconds), notes=notes)
    if device.type == "cuda":
        meta.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=True, gpu_memory_gib=round(
                        torch.cuda.get_device_properties(device).total_memory / 2**30, 1))

    def save():
        meta["elapsed_s"] = round(time.perf_counter() - T_START, 2)
        write_json(args.json, dict(meta=meta, rows=[asdict(r) for r in rows],
                                   skipped=skipped_summary(rows)))

    print(f"gpu_tiny: {meta['device_name']}, torch {torch.__version__}, effscale "
          f"{meta['effscale']}, {meta['date']}; {len(models)} model(s), batches "
          f"{','.join(map(str, args.batches))}, levers {','.join(args.levers)}, at most "
          f"{args.max_seconds:g} s", flush=True)
    for note in notes:
        print("note:", note, flush=True)

    child = None
    compile_rows = [r for r in rows if r.lever == "compile" and r.status == "pending"]
    if compile_rows:
        try:
            child = CompileChild(compile_rows[0], args, device)
        except Exception as exc:  # noqa: BLE001
            compile_rows[0].status, compile_rows[0].reason = "error", _error(exc)
    row_cost: dict[str, float] = {}
    cuda_broken = None
    try:
        for r in rows:
            if child is not None:
                _serve_child(child, deadline)
            if r.status != "pending" or r.lever == "compile":
                continue
            if cuda_broken:
                r.status, r.reason = "skipped", f"CUDA unusable after: {cuda_broken}"
                continue
            reserve = 3.0 if child is not None and not child.done else 0.0
            # A row bounds its own warm-up and rounds by the deadline, so it only needs room
            # for its setup and one round: its model's last cost, capped (a first row also
            # pays for one-off start-up costs).
            need = min(row_cost.get(r.model, statistics.median(row_cost.values())
                                    if row_cost else 1.0), 3.0)
            if time.perf_counter() + need + reserve > deadline:
                r.status, r.reason = "skipped", "time budget"
                continue
            start = time.perf_counter()
            r.compiling_alongside = child is not None and child.compiling
            try:
                measure_row(r, args, device, deadline - reserve)
            except Exception as exc:  # noqa: BLE001  (a row fails, the script goes on)
                r.status, r.reason = "error", _error(exc)
                cuda_broken = _check_cuda(device)
            r.row_s = time.perf_counter() - start
            if r.status == "ok":
                row_cost[r.model] = r.row_s
            _print_row(r)
            save()
        if child is not None and not child.done:
            # Everything else is done: wait for the compile (until the budget says stop).
            while child.compiling and time.perf_counter() < deadline - 3.0:
                child.poll(wait=min(1.0, deadline - 3.0 - time.perf_counter()))
            _serve_child(child, deadline)
    finally:  # also on SIGTERM (an outer timeout): no orphan child, JSON and table out
        if child is not None and not child.done:
            child.expire()
            _print_row(child.row)
        for r in rows:
            if r.status == "pending":
                r.status, r.reason = "skipped", "interrupted"
        save()
        print()
        print(table(rows))
        print()
        for line in skipped_summary(rows):
            print(line)
        done = sum(r.status == "ok" for r in rows)
        errors = sum(r.status == "error" for r in rows)
        print(f"{done} row(s) measured, {errors} error(s), {len(rows) - done - errors} "
              f"skipped; {time.perf_counter() - T_START:.1f} s"
              + (f"; JSON in {args.json}" if args.json else ""), flush=True)
    return 0


def _serve_child(child: CompileChild, deadline: float) -> None:
    """Between rows: if the compile child is ready, let it time its steps now."""
    child.poll()
    if child.ready is not None and not child.done:
        seconds = min(3.0, deadline - time.perf_counter() - 0.5)
        if seconds > 0.5:
            child.run_timed(seconds)
            _print_row(child.row)


def _print_row(r: Row) -> None:
    if r.status == "ok":
        text = f"{r.img_s:,.0f} img/s" + (f" (compile {r.compile_s:.1f} s)"
                                          if r.compile_s is not None else "")
    else:
        text = f"{r.status}: {r.reason}"
    print(f"[{time.perf_counter() - T_START:5.1f} s] {r.label}: {text}", flush=True)


def _resolution(name: str) -> int:
    try:
        return effscale.model_spec(name).resolution
    except ValueError:
        return 0


def _check_cuda(device: torch.device) -> str | None:
    """After an error: None if CUDA still works (out of memory, a failed capture), else why."""
    gc.collect()
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.ones(1, device=device).add_(1).item()
        return None
    except Exception as exc:  # noqa: BLE001
        return _error(exc)


if __name__ == "__main__":
    sys.exit(main())
