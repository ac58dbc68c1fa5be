"""ONNX export: onnxruntime must reproduce PyTorch's logits; failures leave no file."""

import json
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from effscale import create_model, export_onnx
from effscale.io.checkpoint import model_meta, save_model_file


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 OpenMP threads on the shared 2-core machine spin against other processes (see
    test_weights.py); 1 thread is far faster there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def calibrated(model: nn.Module, size: int = 64) -> nn.Module:
    """BN statistics from a random batch, then the classifier scaled so logits have std ~1: a
    1e-4 tolerance then means something (fresh BN statistics give logits ~1e-6; calibrated
    ones without the scaling ~1e2, where fp32 rounding alone exceeds 1e-4)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            nn.init.uniform_(m.weight, 0.8, 1.2)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        model.train()(x)
        scale = model.eval()(x).std()
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        classifier.weight /= scale
        classifier.bias /= scale
    return model


def onnx_logits(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_checkpoint_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = calibrated(create_model("b0@res=64", num_classes=10))
    save_model_file(tmp_path / "run" / "best.safetensors", model,
                    model_meta(model, dataset="cifar10", mean=[0.5] * 3, std=[0.25] * 3))
    result = export_onnx(tmp_path / "run", tmp_path / "b0.onnx")
    assert (result.batch, result.resolution, result.model) == (None, 64, "b0@res=64")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    x = torch.randn(5, 3, 64, 64)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(x)
    assert 0.1 < expected.std() < 10
    torch.testing.assert_close(onnx_logits(tmp_path / "b0.onnx", x), expected,
                               atol=1e-4, rtol=1e-4)
    proto = onnx.load(tmp_path / "b0.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["effscale"])
    assert (meta["model"], meta["dataset"], meta["num_classes"]) == ("b0@res=64", "cifar10", 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.onnx", "run"]


def test_cli_exports_a_name_with_timm_weights_at_a_fixed_batch(tmp_path, run_cli):
    torch.manual_seed(0)
    source = calibrated(timm.create_model("efficientnet_b0", num_classes=7))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              tmp_path / "timm_b0.safetensors")
    code, out, err = run_cli("export", "b0@res=64", "--weights", tmp_path / "timm_b0.safetensors",
                             "--classes", "7", "--batch", "1", "--onnx", tmp_path / "b0.onnx")
    assert code == 0, err
    assert "b0@res=64, 64 px, batch 1, opset" in out and "onnxruntime vs PyTorch" in out
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
    torch.testing.assert_close(onnx_logits(tmp_path / "b0.onnx", x), expected,
                               atol=1e-4, rtol=1e-4)
    shape = onnx.load(tmp_path / "b0.onnx").graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 64, 64]


class _BrokenProgram:
    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"half an onnx file")
        raise RuntimeError("disk full")


class _WrongProgram:
    """A valid ONNX file whose logits are all ones: the onnxruntime check must reject it."""
    def save(self, path):
        ones = onnx.helper.make_tensor("ones", onnx.TensorProto.FLOAT, [3, 1000], [1.0] * 3000)
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Constant", [], ["logits"], value=ones)], "wrong",
            [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, None)],
            [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)])
        onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)],
                                         ir_version=8), path)


def test_a_failed_export_or_check_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: _BrokenProgram())
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx("b0@res=32", tmp_path / "out" / "m.onnx")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: _WrongProgram())
    with pytest.raises(ValueError, match="onnxruntime's logits differ from PyTorch's by 1"):
        export_onnx("b0@res=32", tmp_path / "out" / "m.onnx")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_errors_are_one_line(tmp_path, run_cli, monkeypatch):
    save_model_file(tmp_path / "m.safetensors", create_model("b0@res=32"),
                    model_meta(create_model("b0@res=32")))
    cases = [
        (["nonsense"], "'nonsense' is neither a checkpoint nor a model name"),
        (["runs/absent/best.safetensors"], "no such checkpoint: runs/absent/best.safetensors"),
        (["b0", "--opset", "13"], "opset 13: the torch.export-based ONNX exporter writes"),
        (["b0", "--batch", "0"], "batch must be >= 1"),
        ([tmp_path / "m.safetensors", "--weights", "w.pth"], "--weights applies to a model name"),
    ]
    for argv, message in cases:
        code, out, err = run_cli("export", *argv, "--onnx", tmp_path / "x.onnx")
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    code, _, err = run_cli("export", "b0", "--onnx", tmp_path / "x.onnx")
    assert code == 2 and "needs onnxscript: pip install 'effscale[onnx]'" in err
    assert not (tmp_path / "x.onnx").exists()
    assert np.all([p.suffix != ".tmp" for p in tmp_path.iterdir()])
