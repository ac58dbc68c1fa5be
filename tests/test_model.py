import math

import pytest
import timm
import torch
import torchvision

from effscale import create_model, model_spec

EXACT_PARAMS = {"b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
                "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", list(EXACT_PARAMS))
def test_exact_parameter_counts_equal_reference_timm_and_torchvision(variant):
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = create_model(variant)
        tv = getattr(torchvision.models, f"efficientnet_{variant}")()
        tm = timm.create_model(f"efficientnet_{variant}")
    assert n_params(ours) == EXACT_PARAMS[variant] == n_params(tv) == n_params(tm)


def test_forward_shapes_and_feature_maps():
    model = create_model("b0@res=64", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_stages(x)
    assert len(features) == len(model.feature_info) == 8
    for f, info in zip(features, model.feature_info):
        assert f.shape[1] == info["channels"]
        assert f.shape[-1] == math.ceil(64 / info["reduction"])
    assert model(x).shape == (2, 7)
    torch.testing.assert_close(model.forward_head(features[-1]), model(x))


def test_stem_stride_1_keeps_a_2x2_final_map_at_32px():
    x = torch.randn(1, 3, 32, 32)
    assert create_model("b0@res=32").eval().forward_features(x).shape[-1] == 1
    assert create_model("b0@res=32", stem_stride=1).eval().forward_features(x).shape[-1] == 2


def test_grayscale_input_and_class_count():
    model = create_model("b0@phi=-4", num_classes=10, in_chans=1, stem_stride=1).eval()
    assert model.stem.conv.in_channels == 1
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


def test_squeeze_width_comes_from_the_block_input():
    model = create_model("b0")
    first_mbconv6 = model.stages[1][0]   # 16 -> 24 channels, expanded to 96
    assert first_mbconv6.se.reduce.in_channels == 96
    assert first_mbconv6.se.reduce.out_channels == 4   # int(16 * 0.25), not 96 * 0.25
    assert model.stages[1][1].se.reduce.out_channels == 6   # int(24 * 0.25)
    # only SE convs and the classifier have a bias
    biased = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.endswith("bias")
              and ".bn" not in n}
    assert all(n.endswith(("se.reduce", "se.expand")) or n == "classifier" for n in biased)


def test_stochastic_depth_follows_the_tf_schedule():
    model = create_model("b0", drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 16
    assert [b.drop_path_rate for b in blocks] == pytest.approx([0.3 * i / 16 for i in range(16)])
    assert model.drop_rate == 0.2 and create_model("b7", drop_rate=0.1).drop_rate == 0.1
    assert create_model("b6").drop_rate == 0.5


def test_tf_init_statistics():
    torch.manual_seed(0)
    model = create_model("b0")
    head = model.head.conv.weight    # 1x1, 320 -> 1280: fan_out = 1280
    assert head.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.03)
    dw = model.stages[5][1].dw.conv.weight   # depthwise 5x5: fan_out = 25, not 25 * C
    assert dw.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.03)
    fc = model.classifier.weight
    assert fc.abs().max().item() <= 1 / math.sqrt(1000)
    assert fc.abs().max().item() > 0.95 / math.sqrt(1000)


def test_tf_batchnorm_settings():
    bn = create_model("b0", bn="tf").stem.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    with pytest.raises(ValueError, match="bn must be one of"):
        create_model("b0", bn="keras")


def _grads_and_output(checkpointing: bool):
    torch.manual_seed(0)
    model = create_model("b0@phi=-3,res=64", num_classes=5, drop_path_rate=0.5)
    model.train().set_grad_checkpointing(checkpointing)
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(123)  # same RNG stream for the stochastic-depth and dropout masks
    out = model(x)
    out.square().sum().backward()
    return (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def test_grad_checkpointing_gives_same_outputs_and_gradients():
    out_plain, grads_plain, buffers_plain = _grads_and_output(False)
    out_ckpt, grads_ckpt, buffers_ckpt = _grads_and_output(True)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # the recompute in backward must not move BatchNorm running statistics a second time
    for name, buf in buffers_plain.items():
        torch.testing.assert_close(buffers_ckpt[name], buf, rtol=0, atol=0, msg=name)


def test_model_spec_drives_the_model():
    spec = model_spec("b0@d=2,w=0.5")
    model = create_model(spec)
    assert [len(s) for s in model.stages] == [s.repeats for s in spec.stages]
    assert model.head.conv.out_channels == spec.head_channels == 640


def test_bad_arguments():
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_model("b0", drop_path_rate=1.5)
    with pytest.raises(ValueError, match="unknown base"):
        create_model("b99")


def test_zero_init_starts_residual_blocks_as_identity_and_predicts_uniformly():
    torch.manual_seed(0)
    model = create_model("b0@phi=-4,res=32", num_classes=10).zero_init().eval()
    residual = [b for stage in model.stages for b in stage if b.has_residual]
    assert residual  # the test must see some
    for block in residual:
        x = torch.randn(2, block.project.bn.num_features, 8, 8)
        assert torch.equal(block(x), x)
    logits = model(torch.randn(3, 3, 32, 32))
    assert torch.equal(logits, torch.zeros_like(logits))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4, 9]))
    assert loss.item() == pytest.approx(math.log(10))
    plain = create_model("b0@phi=-4,res=32", num_classes=10, drop_rate=0.0)  # TF init: not
    assert plain(torch.randn(8, 3, 32, 32)).std() > 0.1  # uniform (train mode: batch stats)
