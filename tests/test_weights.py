"""effscale.load_weights against real torchvision, timm and lukemelas models (random weights).

Source models get random BatchNorm affine parameters and running statistics calibrated on a
random batch, so that activations stay O(1) through the network: with fresh BN statistics the
logits are ~1e-6 and a 1e-4 tolerance would prove nothing. Any wrongly mapped BN (e.g. bn1 and
bn2 of a timm block, which have the same shape) then changes the logits.
"""

import warnings

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from effscale import create_model, load_weights

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On the shared 2-core machine, 2 OpenMP threads spin against other processes and small
    forwards run ~50x slower than on 1 thread (measured: 2.5 s vs 0.04 s for B2 at 64 px)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calibrated(model: nn.Module, size: int = SIZE) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running stats := this batch's stats
            m.weight.data = torch.rand(m.weight.shape, generator=gen) * 0.4 + 0.8
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.2
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()


SOURCES = {
    "torchvision": lambda v, **kw: getattr(torchvision.models, f"efficientnet_{v}")(**kw),
    "timm": lambda v, **kw: timm.create_model(f"efficientnet_{v}", pretrained=False, **kw),
}


@pytest.fixture(scope="module")
def sources():
    """Calibrated source models, built once per module: (library, variant) -> model."""
    cache = {}

    def get(library, variant):
        if (library, variant) not in cache:
            torch.manual_seed(0)
            cache[library, variant] = calibrated(SOURCES[library](variant))
        return cache[library, variant]
    return get


def assert_same_logits(ours, source, size=SIZE):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = source(x)
        got = ours.eval()(x)
    assert expected.std() > 0.1, "source logits too small for the comparison to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("library", list(SOURCES))
@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_logits_equal_the_source_model(sources, library, variant):
    source = sources(library, variant)
    ours = load_weights(create_model(variant), source.state_dict())
    assert_same_logits(ours, source)


def test_files_safetensors_and_pth_and_training_checkpoint(sources, tmp_path):
    source = sources("timm", "b0")
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    assert_same_logits(load_weights(create_model("b0"), tmp_path / "w.safetensors"), source)
    # a DDP-wrapped state dict inside a timm train.py checkpoint, without num_batches_tracked
    wrapped = {f"module.{k}": v for k, v in state.items() if "num_batches_tracked" not in k}
    torch.save({"arch": "efficientnet_b0", "epoch": 3, "state_dict": wrapped}, tmp_path / "c.pth")
    ours = create_model("b0")
    load_weights(ours, str(tmp_path / "c.pth"))
    assert_same_logits(ours, source)
    assert int(ours.stem.bn.num_batches_tracked) == 0  # the model's own counter is kept


def test_lukemelas_logits_equal_at_sizes_where_same_padding_is_symmetric():
    luke = pytest.importorskip("efficientnet_pytorch")
    for variant in ("b0", "b2"):
        torch.manual_seed(0)
        # lukemelas pads TF-"same"; at 65 px every stride-2 input (65, 33, 17, 9, 5) is odd,
        # where "same" padding is symmetric, so the outputs must agree exactly there.
        source = calibrated(luke.EfficientNet.from_name(f"efficientnet-{variant}", image_size=65),
                            65)
        with pytest.warns(UserWarning, match="TF-'same'"):
            ours = load_weights(create_model(variant, bn="tf"), source.state_dict())
        assert_same_logits(ours, source, size=65)
    with pytest.raises(ValueError, match="eps 0.001.*bn='tf'"):
        load_weights(create_model("b2"), source.state_dict())


@pytest.mark.parametrize("variant", [f"b{i}" for i in range(8)])
def test_every_variant_maps_key_for_key(variant):
    """Shapes only (meta tensors): every key of every B0-B7 finds its place."""
    tf_eps = variant in ("b5", "b6", "b7")  # torchvision ported B5-B7 from TF: eps 1e-3
    with torch.device("meta"):
        tv = SOURCES["torchvision"](variant).state_dict()
        tm = SOURCES["timm"](variant).state_dict()
        load_weights(create_model(variant, bn="tf" if tf_eps else "torch"), tv)
        load_weights(create_model(variant), tm)
        if tf_eps:
            with pytest.raises(ValueError, match=r"torchvision efficientnet_b\d uses BatchNorm "
                                                 r"eps 0.001.*bn='tf'"):
                load_weights(create_model(variant), tv)


def test_wrong_variant_names_what_the_weights_are(sources):
    with pytest.raises(ValueError) as err:
        load_weights(create_model("b2"), sources("torchvision", "b0").state_dict())
    message = str(err.value)
    assert "\n" not in message
    assert "the weights are a b0 (16 blocks, head 1280 channels)" in message
    assert "the model b2 (23 blocks, head 1408 channels)" in message
    assert "shape mismatches, e.g. " in message and "missing" in message


def test_wrong_class_count_and_ignore_classifier(sources):
    torch.manual_seed(0)
    source = calibrated(timm.create_model("efficientnet_b0", num_classes=10))
    with pytest.raises(ValueError, match=r"2 shape mismatches, e.g. classifier.bias <- "
                                         r"classifier.bias: weights \(10,\) vs model "
                                         r"\(1000,\), classifier.weight <- classifier.weight: "
                                         r"weights \(10, 1280\) vs model \(1000, 1280\)") as err:
        load_weights(create_model("b0"), source.state_dict())
    assert "the weights have 10 classes, the model 1000" in str(err.value)
    ours = create_model("b0")
    classifier = ours.classifier.weight.clone()
    load_weights(ours, source.state_dict(), ignore_classifier=True)
    assert torch.equal(ours.classifier.weight, classifier)
    torch.testing.assert_close(ours.eval().forward_features(torch.ones(1, 3, 64, 64)),
                               source.forward_features(torch.ones(1, 3, 64, 64)))


def test_unknown_and_missing_keys_are_counted(sources):
    state = dict(sources("timm", "b0").state_dict())
    state["blocks.9.0.conv_dw.weight"] = torch.zeros(3)
    del state["conv_head.weight"]
    with pytest.raises(ValueError, match=r"1 model keys missing from the weights, e\.g\. "
                                         r"head\.conv\.weight \(1280, 320, 1, 1\); 1 unexpected "
                                         r"keys, e\.g\. blocks\.9\.0\.conv_dw\.weight"):
        load_weights(create_model("b0"), state)


def test_tf_efficientnet_is_refused_with_the_reason(tmp_path):
    with torch.device("meta"):
        state = timm.create_model("tf_efficientnet_b0").state_dict()
        model = create_model("b0")
    with pytest.raises(ValueError, match="pads TF-'same'.*does not implement"):
        load_weights(model, state, source="tf_efficientnet_b0")
    with pytest.raises(ValueError, match="tf_efficientnet"):
        load_weights(model, {"arch": "tf_efficientnet_b0", "state_dict": state})
    torch.save({"x": torch.zeros(1)}, tmp_path / "tf_efficientnet_b0_aa.pth")
    with pytest.raises(ValueError, match="pads TF-'same'"):
        load_weights(model, tmp_path / "tf_efficientnet_b0_aa.pth")


def test_files_that_are_not_state_dicts(tmp_path):
    model = create_model("b0@res=64")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other_net.pt")
    cases = {"text.pth": "not a state dict file torch.load\\(weights_only=True\\) can read",
             "text.safetensors": "not a readable safetensors file",
             "list.pt": "holds a list, not a state dict",
             "numbers.pt": "2 entries are not name -> tensor",
             "other_net.pt": "not a recognised EfficientNet state dict"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_weights(model, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_weights(model, tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="source='timm' but the keys .* torchvision"):
        load_weights(model, {"features.0.0.weight": torch.zeros(1)}, source="timm")


def test_effscale_state_dict_round_trips():
    a, b = create_model("b0@res=64", num_classes=5), create_model("b0@res=64", num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(b, a.state_dict(), source="effscale")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
