import subprocess
import sys

import pytest
import torch
import torchvision
from timm.models._efficientnet_builder import round_channels
from torchvision.models.efficientnet import _make_divisible

from effscale import model_spec
from effscale.model.spec import round_filters, round_repeats, stage_resolutions

PAPER_TABLE_1 = [  # expand, kernel, stride, out channels, repeats
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def test_b0_spec_is_the_paper_table_1():
    spec = model_spec("b0")
    assert [(s.expand_ratio, s.kernel, s.stride, s.out_channels, s.repeats)
            for s in spec.stages] == PAPER_TABLE_1
    assert (spec.stem_channels, spec.head_channels, spec.resolution) == (32, 1280, 224)
    assert spec.dropout == 0.2 and spec.drop_path_rate == 0.2


def test_round_filters_agrees_with_timm_and_torchvision():
    for channels in (16, 24, 32, 40, 80, 112, 192, 320, 1280):
        for width in (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 3.1, 4.3):
            ours = round_filters(channels, width)
            assert ours == round_channels(channels, width, 8)
            assert ours == _make_divisible(channels * width, 8)


def test_round_filters_hand_computed():
    assert round_filters(32, 1.1) == 32     # 35.2 -> 32, and 32 >= 0.9 * 35.2
    assert round_filters(40, 1.1) == 48     # 44 -> int(48) // 8 * 8 = 48
    assert round_filters(16, 0.1) == 8      # never below the divisor
    assert round_filters(100, 1.0) == 104   # 104 // 8 * 8 = 104 (nearest multiple)
    assert round_repeats(3, 1.1) == 4 and round_repeats(1, 1.1) == 2
    assert round_repeats(10, 1.1) == 11     # float noise must not add a block
    assert round_repeats(4, 0.01) == 1      # a stage never disappears


@pytest.mark.parametrize("variant", [f"b{i}" for i in range(8)])
def test_stage_channels_and_repeats_match_torchvision(variant):
    with torch.device("meta"):
        tv = getattr(torchvision.models, f"efficientnet_{variant}")()
    spec = model_spec(variant)
    tv_stages = list(tv.features)[1:8]
    assert [len(s) for s in tv_stages] == [s.repeats for s in spec.stages]
    assert [s[-1].out_channels for s in tv_stages] == [s.out_channels for s in spec.stages]
    assert tv.features[0][0].out_channels == spec.stem_channels
    assert tv.features[8][0].out_channels == spec.head_channels


def test_stage_resolutions_of_b0_at_32_px():
    # docs/REFERENCE.md, pitfalls: B0 at 32x32 ends with 1x1 maps; stem stride 1 keeps 2x2
    spec = model_spec("b0@res=32")
    assert stage_resolutions(spec) == [16, 16, 8, 4, 2, 2, 1, 1]
    assert stage_resolutions(spec, stem_stride=1)[-1] == 2


def test_spec_and_profile_need_no_torch():
    code = ("import sys, effscale; s = effscale.model_spec('b3'); p = effscale.profile('b3'); "
            "effscale.match_flops('b0', 'depth', p.macs); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(p.params)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12233232"


def test_spec_is_frozen():
    spec = model_spec("b0")
    with pytest.raises(Exception):
        spec.resolution = 300
