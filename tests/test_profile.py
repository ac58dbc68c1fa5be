import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effscale import create_model, match_flops, parse_name, profile

# docs/REFERENCE.md: exact params and MACs (convs + FC) at each member's own resolution
REFERENCE = {"b0": (5_288_548, 0.386e9), "b1": (7_794_184, 0.687e9), "b2": (9_109_994, 0.994e9),
             "b3": (12_233_232, 1.827e9), "b4": (19_341_616, 4.394e9),
             "b5": (30_389_784, 10.266e9), "b6": (43_040_704, 19.068e9),
             "b7": (66_347_960, 37.746e9)}
PAPER_FLOPS = {"b0": 0.39e9, "b1": 0.70e9, "b2": 1.0e9, "b3": 1.8e9, "b4": 4.2e9,
               "b5": 9.9e9, "b6": 19e9, "b7": 37e9}


@pytest.mark.parametrize("variant", list(REFERENCE))
def test_params_and_macs_match_the_reference(variant):
    p = profile(variant)
    params, macs = REFERENCE[variant]
    assert p.params == params
    assert p.macs == pytest.approx(macs, rel=0.001)
    assert p.flops == 2 * p.macs
    # the paper's own (rounded) FLOPs column, which counts MACs
    assert p.macs == pytest.approx(PAPER_FLOPS[variant], rel=0.065)


def counted_macs(model, resolution, in_chans=3):
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, in_chans, resolution, resolution))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name, kwargs, resolution", [
    ("b0", {}, 224),
    ("b0@phi=-2", dict(num_classes=10, stem_stride=1), 64),
    ("b0@d=2,w=0.5", dict(num_classes=3, in_chans=1), 96),
    ("b3@res=65", {}, 65),   # odd size: every strided conv rounds up
])
def test_analytic_macs_agree_with_torch_flop_counter(name, kwargs, resolution):
    model = create_model(name, **kwargs)
    expected = counted_macs(model, resolution, kwargs.get("in_chans", 3))
    ours = profile(model, resolution)
    assert ours.macs == pytest.approx(expected, rel=0.005)
    assert ours.params == sum(p.numel() for p in model.parameters())


def saved_activation_bytes(model, x):
    """Bytes autograd keeps for backward, counting each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(storages.values())


@pytest.mark.parametrize("name, stem_stride, resolution, batch", [
    ("b0@phi=-2", 1, 64, 2), ("b0@res=96", 2, 96, 3)])
def test_activation_estimate_is_close_to_what_autograd_saves(name, stem_stride, resolution, batch):
    model = create_model(name, num_classes=10, stem_stride=stem_stride)
    x = torch.randn(batch, 3, resolution, resolution)
    measured = saved_activation_bytes(model, x)
    estimate = profile(model, resolution, batch_size=batch).activation_bytes
    assert estimate == pytest.approx(measured, rel=0.05)
    assert profile(model, resolution, batch, precision="bf16").activation_bytes == estimate // 2


@pytest.mark.parametrize("dimension", ["depth", "width", "resolution", "compound"])
def test_match_flops_finds_the_closest_variant(dimension):
    target = profile("b0@phi=1").macs
    m = match_flops("b0", dimension, target)
    assert profile(m.name).macs == m.macs          # the name is buildable and means what it says
    assert m.ratio == pytest.approx(m.macs / target)
    if dimension in ("width", "compound"):
        assert m.within <= 0.02
    # nothing on the searched axis near the answer is closer
    key = {"depth": "d", "width": "w", "compound": "phi", "resolution": "res"}[dimension]
    value = float(m.name.split(f"{key}=")[1])
    step = 1 if dimension == "resolution" else 0.01
    neighbours = [value + k * step for k in range(-30, 31) if value + k * step > 0]
    for v in neighbours:
        name = f"b0@res={int(v)}" if key == "res" else f"b0@{key}={v:.2f}"
        assert abs(profile(name).macs - target) >= abs(m.macs - target)


def test_depth_moves_in_whole_blocks_and_reports_how_close_it_got():
    # between consecutive block counts the MACs jump: the ratio says how far off the match is
    target = profile("b0").macs * 1.03
    m = match_flops("b0", "depth", target)
    assert m.within > 0.0
    assert abs(m.ratio - 1) == pytest.approx(m.within)


def test_match_on_a_compound_shrunk_base_keeps_its_other_keys():
    target = 2 * profile("b0@phi=-4", stem_stride=1).macs
    m = match_flops("b0@phi=-4", "depth", target, stem_stride=1)
    assert m.name.startswith("b0@d=") and "phi=-4" in m.name
    # a 10-block base moves in big steps: brute force confirms no depth gets closer
    best = min(abs(profile(f"b0@phi=-4,d={i / 100}", stem_stride=1).macs - target)
               for i in range(100, 500))
    assert abs(m.macs - target) == best


def test_compound_match_on_a_base_with_fixed_resolution_still_scales_resolution():
    base = "b0@phi=-6,res=28"
    m = match_flops(base, "compound", 2 * profile(base, stem_stride=1).macs, stem_stride=1)
    assert "res=" not in m.name and "r=" in m.name
    assert parse_name(m.name).resolution > 28
    assert m.within <= 0.02


def test_bad_match_requests():
    with pytest.raises(ValueError, match="dimension must be one of"):
        match_flops("b0", "height", 1e9)
    with pytest.raises(ValueError, match="target_macs must be > 0"):
        match_flops("b0", "depth", 0)


def test_profile_command_table_has_paper_column_and_conventions(run_cli):
    code, out, err = run_cli("profile", "b0", "b3")
    assert code == 0 and err == ""
    assert "paper(G)" in out and "0.39" in out and "1.8" in out
    assert "what the paper calls FLOPs" in out and "2 x MACs" in out


def test_profile_command_json_and_csv(run_cli):
    code, out, _ = run_cli("profile", "b0", "b0@phi=1", "--format", "json", "--classes", "10")
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["b0", "b0@phi=1"]
    assert rows[0]["params"] == profile("b0", num_classes=10).params
    code, out, _ = run_cli("profile", "b1", "--format", "csv", "--resolution", "300")
    header, line = out.strip().splitlines()
    assert header.startswith("model,res,params") and line.startswith("b1,300,")


def test_profile_match_prints_all_four_strategies(run_cli):
    code, out, _ = run_cli("profile", "--match", "b0@phi=1")
    assert code == 0
    for prefix in ("b0@d=", "b0@w=", "b0@res=", "b0@phi=1 "):
        assert prefix in out


@pytest.mark.parametrize("argv, words", [
    (["profile", "b9"], "unknown base model"),
    (["profile", "b0@d=-1"], "d must be > 0"),
    (["profile", "b0", "--resolution", "8"], "too small"),
    (["profile", "--format", "xml"], "invalid choice"),
    (["profile", "b0", "--classes", "0"], "--classes must be >= 1"),
    (["nonsense"], "invalid choice"),
])
def test_profile_bad_input_is_one_line_and_exit_2(run_cli, argv, words):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err
    assert "Traceback" not in err
