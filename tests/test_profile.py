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
    assert "activations: output elements of every conv and the FC per image" in out


def test_profile_command_json_and_csv(run_cli):
    code, out, _ = run_cli("profile", "b0", "b0@phi=1", "--format", "json", "--classes", "10")
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["b0", "b0@phi=1"]
    assert rows[0]["params"] == profile("b0", num_classes=10).params
    assert rows[0]["activations"] == profile("b0", num_classes=10).activations
    code, out, _ = run_cli("profile", "b1", "--format", "csv", "--resolution", "300")
    header, line = out.strip().splitlines()
    assert header.startswith("model,res,params") and line.startswith("b1,300,")
    assert header.split(",") == ["model", "res", "params", "MACs(G)", "FLOPs(G)", "paper(G)",
                                 "activations", "act/img(MB)"]
    assert int(line.split(",")[6]) == profile("b1", 300).activations


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
    (["profile", "b0", "--resolution", "1000000000"], "--resolution must be in (0, 8192]"),
    (["profile", "b0", "--resolution", "-5"], "--resolution must be in (0, 8192]"),
    (["nonsense"], "invalid choice"),
])
def test_profile_bad_input_is_one_line_and_exit_2(run_cli, argv, words):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err
    assert "Traceback" not in err


# ---- activations [fast]: conv + linear output elements per image (docs/REFERENCE.md) --------

def hooked_activations(model, resolution, in_chans=3, batch=2):
    """Sum of the output elements of every nn.Conv2d and nn.Linear on a real forward, per image."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel()
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(batch, in_chans, resolution, resolution))
    finally:
        for h in handles:
            h.remove()
    assert total % batch == 0
    return total // batch


@pytest.mark.parametrize("name, kwargs, resolution", [
    ("b0", {}, 224),
    ("b0@phi=-4,res=64", dict(stem_stride=1), 64),
    ("b0@phi=-4,res=64", dict(stem_stride=2), 64),
    ("b0@d=9.29,res=36,phi=-10", dict(in_chans=1, num_classes=10), 36),
    ("b3", {}, 300),
])
def test_activations_equal_conv_and_linear_outputs_of_a_forward(name, kwargs, resolution):
    model = create_model(name, **kwargs)
    expected = hooked_activations(model, resolution, kwargs.get("in_chans", 3))
    assert profile(model).activations == expected
    assert profile(name, **kwargs).activations == expected  # from the name alone, same count


def test_activations_by_hand_on_a_two_stage_network():
    from effscale.model.profile import count_layers
    from effscale.model.spec import ModelSpec, StageSpec
    spec = ModelSpec(name="tiny", width=1.0, depth=1.0, resolution=16, stem_channels=8,
                     head_channels=32, dropout=0.0,
                     stages=(StageSpec(1, 3, 1, 8, 8, 1), StageSpec(6, 3, 2, 8, 16, 2)))
    # 16 px, stem stride 2 -> 8x8 maps; the strided block -> 4x4
    stem = 8 * 8 * 8                                        # 512
    block1 = 8 * 64 + (2 + 8) + 8 * 64                      # dw, SE (squeeze 2) 2 + 8, project
    block2 = 48 * 64 + 48 * 16 + (2 + 48) + 16 * 16         # expand at 8x8, dw to 4x4, SE, project
    block3 = 96 * 16 + 96 * 16 + (4 + 96) + 16 * 16         # squeeze int(16 x 0.25) = 4
    head = 32 * 16 + 10                                     # 1x1 conv at 4x4, FC to 10 classes
    assert stem + block1 + block2 + block3 + head == 9642
    counts = count_layers(spec, 16, num_classes=10, stem_stride=2, in_chans=3)
    assert counts.activations == 9642
    assert hooked_activations(create_model(spec, num_classes=10), 16) == 9642


# pycls MODEL_ZOO.md "acts (M)", rounded to 0.1 M (docs/REFERENCE.md, Activations [fast])
PYCLS_ACTS = {"b0": 6.7, "b1": 10.9, "b2": 13.8, "b3": 23.8, "b5": 98.9}


@pytest.mark.parametrize("variant", list(PYCLS_ACTS))
def test_activations_match_pycls_model_zoo(variant):
    assert round(profile(variant).activations / 1e6, 1) == PYCLS_ACTS[variant]


def test_fast_scaling_grows_activations_slower_than_uniform_compound():
    b0 = profile("b0")
    target = 4 * b0.macs
    fast = match_flops("b0", "fast", target, fast_alpha=0.8)
    uniform = match_flops("b0", "fast", target, fast_alpha=0.333333)
    assert fast.within <= 0.02 and uniform.within <= 0.02  # equal MACs
    grow_fast = profile(fast.name).activations / b0.activations
    grow_uniform = profile(uniform.name).activations / b0.activations
    assert grow_fast < grow_uniform
    # activations ~ d w r^2 = s^(1 - alpha/2): s^0.6 for dWr, s^(5/6) for dwr (up to rounding)
    assert grow_fast == pytest.approx(4 ** 0.6, rel=0.1)
    assert grow_uniform == pytest.approx(4 ** (5 / 6), rel=0.1)
