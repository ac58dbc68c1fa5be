"""Measured cost (effscale.model.measure) and `effscale profile --measure`: tiny Fashion-MNIST
models on CPU, one torch thread (the `one_thread` fixture), a few seconds in all."""

import csv
import io
import math

import pytest
import torch

from effscale.model import measure as measure_module
from effscale.model.measure import PEAK_METHODS, Measured, measure

BASE = "b0@phi=-10,res=36"           # the Fashion-MNIST study's base
WIDE = "b0@w=2.3,res=36,phi=-10"     # its width-scaled 4.3x model
TINY = dict(batch=8, rounds=2, in_chans=1, num_classes=10)
_CACHE: dict = {}


@pytest.fixture
def tiny(one_thread):
    """The two models measured once (rounds=2, batch 8), shared by the tests that read them."""
    if "tiny" not in _CACHE:
        _CACHE["tiny"] = measure([BASE, WIDE], **TINY)
    return _CACHE["tiny"]


def test_every_field_is_positive_and_finite(tiny):
    assert [m.name for m in tiny] == [BASE, WIDE]
    for m in tiny:
        assert isinstance(m, Measured)
        assert (m.resolution, m.batch, m.device, m.rounds) == (36, 8, "cpu", 2)
        assert m.precision == "fp32" and m.channels_last is False  # auto on CPU
        assert m.peak_method == PEAK_METHODS["cpu"] == "cpu: autograd saved tensors + params"
        numbers = [m.train_img_s, *m.train_img_s_spread, m.infer_img_s, *m.infer_img_s_spread,
                   m.latency_ms, m.latency_p90_ms, m.peak_mib]
        assert all(math.isfinite(v) and v > 0 for v in numbers)
        lo, hi = m.train_img_s_spread
        assert lo <= m.train_img_s <= hi
        lo, hi = m.infer_img_s_spread
        assert lo <= m.infer_img_s <= hi
        assert m.latency_p90_ms >= m.latency_ms


def test_the_wider_model_needs_more_memory(tiny):
    base, wide = tiny
    assert wide.peak_mib > base.peak_mib
    # the CPU peak is what autograd saves plus params, grads and momentum: the analytic
    # activation estimate plus 3 x the fp32 parameters, to within 5%
    from effscale import profile
    for m in tiny:
        p = profile(m.name, batch_size=8, in_chans=1, num_classes=10)
        assert m.peak_mib * 2**20 == pytest.approx(p.activation_bytes + 12 * p.params, rel=0.05)


def test_rounds_are_interleaved_across_models(one_thread, monkeypatch):
    order = []
    original = measure_module._Candidate.train_step

    def recording(self, setup, x=None, y=None):
        order.append(self.name)
        return original(self, setup, x, y)
    monkeypatch.setattr(measure_module._Candidate, "train_step", recording)
    measure([BASE, WIDE], batch=2, rounds=2, warmup=1, in_chans=1, num_classes=10)
    # 1 warm-up + 2 timed rounds, A B each round, then one memory step each
    assert order == [BASE, WIDE] * 3 + [BASE, WIDE]


def test_a_batch_that_does_not_fit_is_one_clear_error(one_thread, monkeypatch):
    def out_of_memory(self, setup, x=None, y=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    monkeypatch.setattr(measure_module._Candidate, "train_step", out_of_memory)
    with pytest.raises(ValueError, match=f"^batch 8 does not fit on cpu for {BASE}$"):
        measure([BASE], **TINY)


@pytest.mark.parametrize("kwargs, words", [
    (dict(batch=0), "batch must be >= 1"),
    (dict(rounds=0), "rounds must be >= 1"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(precision="fp8"), "precision must be one of"),
])
def test_bad_arguments_raise_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        measure([BASE], **kwargs)


def test_bad_name_gives_the_parsers_message():
    with pytest.raises(ValueError, match="unknown base model 'b9'"):
        measure(["b9"])
    with pytest.raises(ValueError, match="too small"):
        measure([BASE], resolution=8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        measure([BASE], device="cuda")


# ---- the CLI ---------------------------------------------------------------------------------

MEASURE_ARGS = ("--measure", "--batch", "8", "--rounds", "2", "--in-chans", "1",
                "--classes", "10")
COLUMNS = ("train_img_s", "train_img_s_min", "train_img_s_max", "infer_img_s",
           "infer_img_s_min", "infer_img_s_max", "latency_ms", "latency_p90_ms", "peak_mib")


def test_profile_measure_prints_the_measured_columns(run_cli, one_thread):
    code, out, err = run_cli("profile", BASE, WIDE, *MEASURE_ARGS)
    assert code == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header[:8] == ["model", "res", "params", "MACs(G)", "FLOPs(G)", "paper(G)",
                          "activations", "act/img(MB)"]
    assert tuple(header[8:]) == COLUMNS
    assert "peak_mib: one training step, cpu: autograd saved tensors + params" in out
    assert "measured on cpu (torch threads: 1), batch 8, fp32" in out


def test_profile_measure_csv(run_cli, one_thread):
    code, out, err = run_cli("profile", BASE, *MEASURE_ARGS, "--format", "csv")
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["model"] == BASE
    assert all(float(rows[0][c]) > 0 for c in COLUMNS + ("activations",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_profile_measure_on_cuda_without_a_gpu_is_one_line_exit_2(run_cli):
    code, out, err = run_cli("profile", BASE, "--measure", "--device", "cuda")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no CUDA GPU is available" in err


@pytest.mark.parametrize("argv, words", [
    (["--measure", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["--measure", "--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--measure", "--device", "tpu"], "unknown device 'tpu'"),
    (["--batch", "8"], "--batch: only used with --measure"),
])
def test_profile_measure_bad_input_is_one_line_exit_2(run_cli, argv, words):
    code, out, err = run_cli("profile", BASE, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err
    assert "Traceback" not in err


def test_profile_measure_needs_names(run_cli):
    code, _, err = run_cli("profile", "--measure")
    assert code == 2 and "--measure needs model names" in err


# ---- on a GPU (skipped without one; run with -m cuda) ----------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_on_cuda():
    base, wide = measure([BASE, WIDE], device="cuda", **TINY)
    for m in (base, wide):
        assert m.precision == "bf16" and m.channels_last is True
        assert m.peak_method == "cuda max_memory_allocated"
        assert m.train_img_s > 0 and m.latency_ms > 0
    assert wide.peak_mib > base.peak_mib
    with pytest.raises(ValueError, match="^batch 4096 does not fit on cuda for b7$"):
        measure(["b7"], device="cuda", batch=4096, rounds=1, warmup=0)
    torch.cuda.empty_cache()
