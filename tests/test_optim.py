"""TF-RMSprop numerics against a hand computation, and the lr schedule."""

import math

import pytest
import torch

from effscale.training.optim import RMSpropTF, create_optimizer, lr_at, param_groups


def hand_rmsprop_tf(w, grads, lr, alpha, eps, momentum, wd=0.0):
    """TF1 RMSPropOptimizer, written out with Python floats: ms starts at 1, eps inside sqrt,
    lr folded into the momentum."""
    ms, mom = 1.0, 0.0
    trace = []
    for g in grads:
        g = g + wd * w
        ms = alpha * ms + (1 - alpha) * g * g
        mom = momentum * mom + lr * g / math.sqrt(ms + eps)
        w = w - mom
        trace.append(w)
    return trace


@pytest.mark.parametrize("momentum,wd", [(0.9, 0.0), (0.0, 0.0), (0.9, 1e-2)])
def test_rmsprop_tf_matches_hand_computation(momentum, wd):
    w0, grads = 0.5, [0.3, -1.2, 0.05, 2.0, -0.7]
    p = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3, momentum=momentum, weight_decay=wd)
    expected = hand_rmsprop_tf(w0, grads, 0.1, 0.9, 1e-3, momentum, wd)
    for g, want in zip(grads, expected):
        # the gradient given is d loss / dw with loss = g * w (wd added by the optimizer)
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert p.item() == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_rmsprop_tf_differs_from_torch_rmsprop():
    """eps inside the sqrt and ms starting at 1: the first step is lr*g/sqrt(0.9+0.1g^2+eps),
    not torch's lr*g/(sqrt(0.1 g^2)+eps) (about sqrt(10)x larger)."""
    a = torch.nn.Parameter(torch.ones(1))
    b = torch.nn.Parameter(torch.ones(1))
    tf = RMSpropTF([a], lr=0.01, alpha=0.9, eps=1e-3, momentum=0.0)
    pt = torch.optim.RMSprop([b], lr=0.01, alpha=0.9, eps=1e-3, momentum=0.0)
    a.grad = torch.full((1,), 0.1)
    b.grad = torch.full((1,), 0.1)
    tf.step()
    pt.step()
    tf_step = 1 - a.item()
    assert tf_step == pytest.approx(0.01 * 0.1 / math.sqrt(0.9 + 0.1 * 0.01 + 1e-3), rel=1e-5)
    assert (1 - b.item()) > 20 * tf_step


def test_lr_change_affects_only_new_gradients():
    """TF folds lr into the momentum buffer: setting lr to 0 stops new contributions but the
    buffered momentum still moves the weight."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = RMSpropTF([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(1)
    opt.step()
    first = p.item()
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert p.item() == pytest.approx(first + 0.9 * first, rel=1e-6)


def test_no_weight_decay_on_bn_and_bias():
    from effscale.model.net import create_model
    model = create_model("b0@phi=-6,res=32", 10)
    decay, no_decay = param_groups(model, 1e-5, decay_bn_bias=False)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    bn_weight = model.stem.bn.weight
    assert any(p is bn_weight for p in no_decay["params"])
    assert len(param_groups(model, 1e-5, decay_bn_bias=True)) == 1
    with pytest.raises(ValueError, match="unknown optimizer"):
        create_optimizer(model, "lion", lr=0.1, momentum=0.9, alpha=0.9, eps=1e-3,
                         weight_decay=0, decay_bn_bias=False)


def test_schedules():
    kw = dict(peak=1.0, steps_per_epoch=10, epochs=20, warmup_start=0.0)
    # paper: linear warm-up over 5 epochs, then x0.97 every 2.4 epochs counted from step 0
    paper = dict(kw, schedule="step", warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4)
    assert lr_at(0, **paper) == 0.0
    assert lr_at(25, **paper) == pytest.approx(0.5)
    assert lr_at(50, **paper) == pytest.approx(0.97 ** 2)   # epoch 5.0 -> floor(5/2.4) = 2
    assert lr_at(72, **paper) == pytest.approx(0.97 ** 3)   # epoch 7.2
    assert lr_at(71, **paper) == pytest.approx(0.97 ** 2)
    # exponential: smooth decay per epoch after warm-up
    expo = dict(kw, schedule="exponential", warmup_epochs=2, decay_rate=0.9, decay_epochs=1)
    assert lr_at(20, **expo) == pytest.approx(1.0)
    assert lr_at(35, **expo) == pytest.approx(0.9 ** 1.5)
    # cosine: to zero at the end
    cos = dict(kw, schedule="cosine", warmup_epochs=0, decay_rate=0, decay_epochs=0)
    assert lr_at(0, **cos) == pytest.approx(1.0)
    assert lr_at(100, **cos) == pytest.approx(0.5)
    assert lr_at(200, **cos) == pytest.approx(0.0, abs=1e-12)
