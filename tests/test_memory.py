"""Memory planner, gradient accumulation over micro-batches, out-of-memory retry."""

import pytest
import torch
from torch import nn

from effscale.model.memory import GiB, estimate, family_table, parse_bytes, plan
from effscale.training import forward_backward, step_with_retry

TINY = "b0@phi=-6,res=32"


def test_estimate_grows_with_batch_and_shrinks_with_bf16_and_checkpointing():
    one, many = estimate("b0", 1), estimate("b0", 64)
    assert many > one
    # linear in the batch: the per-image part is the same at any batch
    assert estimate("b0", 128) - many == pytest.approx(many - one, rel=0.02)
    assert estimate("b0", 64, precision="bf16") < many
    assert estimate("b0", 64, precision="bf16", grad_checkpointing=True) < \
        estimate("b0", 64, precision="bf16") / 2


def test_plan_splits_only_when_the_budget_is_small():
    cpu = plan(TINY, 64, num_classes=10, stem_stride=1, in_chans=1, device="cpu")
    assert (cpu.micro_batch, cpu.accum_steps, cpu.budget_bytes) == (64, 1, None)
    big = plan(TINY, 64, num_classes=10, stem_stride=1, in_chans=1, memory_budget="64GB")
    assert big.accum_steps == 1
    small = plan(TINY, 64, num_classes=10, stem_stride=1, in_chans=1, memory_budget="600MB")
    assert small.micro_batch < 64 and small.fits
    assert small.micro_batch * small.accum_steps >= 64
    assert small.estimate_bytes <= small.budget_bytes < small.full_batch_bytes
    assert "accumulation" in small.describe()
    hopeless = plan("b7", 8, memory_budget="1GB")
    assert not hopeless.fits and hopeless.micro_batch == 1


def test_parse_bytes():
    assert parse_bytes("8GB") == 8e9 and parse_bytes("1GiB") == GiB and parse_bytes(123) == 123
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_family_fits_batch_32_on_80gb():
    """The goal of the memory work: every B0-B7 trains at its own resolution at batch >= 32
    on one 80 GB GPU (bf16 + grad checkpointing where needed); B7 in fp32 does not."""
    rows = {r["model"]: r for r in family_table("80GB", 32)}
    assert all(r["fits 32"] != "no" for r in rows.values())
    assert rows["b0"]["fits 32"] == "fp32" and rows["b7"]["fp32 max batch"] < 32
    assert rows["b7"]["bf16+ckpt max batch"] >= 32


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_accumulated_gradient_equals_full_batch_gradient():
    """Micro-batches of 3, 3, 3, 1 give the full batch's gradient. The EfficientNet is in
    eval mode so BN uses running statistics (in train mode BN statistics legitimately
    depend on the micro-batch) and dropout / drop path are off."""
    from effscale.model.net import create_model
    torch.manual_seed(0)
    model = create_model(TINY, 10, stem_stride=1, in_chans=1).eval()
    x, y = torch.randn(10, 1, 32, 32), torch.randint(0, 10, (10,))
    kw = dict(criterion=nn.CrossEntropyLoss(label_smoothing=0.1),
              amp=torch.autocast("cpu", enabled=False), scaler=None)
    full_loss = forward_backward(model, x, y, micro_batch=10, **kw)
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    accum_loss = forward_backward(model, x, y, micro_batch=3, **kw)
    assert accum_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    torch.testing.assert_close(_grads(model), full, rtol=1e-4, atol=1e-6)


class _SmallMemory(nn.Module):
    """A linear model that 'runs out of memory' on more than 4 images at once."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.fc(x)


def test_out_of_memory_retries_with_smaller_micro_batch():
    torch.manual_seed(0)
    model = _SmallMemory()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    reference = nn.Linear(6, 3)
    reference.load_state_dict(model.fc.state_dict())
    nn.functional.cross_entropy(reference(x), y).backward()
    messages = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, micro = step_with_retry(model, x, y, micro_batch=16, optimizer=opt, log=messages.append,
                                  criterion=nn.CrossEntropyLoss(),
                                  amp=torch.autocast("cpu", enabled=False), scaler=None)
    assert micro == 4 and len(messages) == 2 and "out of memory" in messages[0]
    torch.testing.assert_close(model.fc.weight.grad, reference.weight.grad)
    torch.testing.assert_close(model.fc.bias.grad, reference.bias.grad)
