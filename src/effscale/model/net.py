"""One generic EfficientNet built from a `ModelSpec`.

Module names (stem / stages.i.j.{expand,dw,se,project} / head / classifier) are ours; the
weight loader translates torchvision, timm and lukemelas names onto them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .names import model_spec
from .spec import BlockSpec, ModelSpec

# BatchNorm conventions: PyTorch defaults (torchvision B0-B4, timm efficientnet_*) or TF's
# decay 0.99 / eps 1e-3 (the paper, torchvision B5-B7).
BN_SETTINGS = {"torch": dict(eps=1e-5, momentum=0.1), "tf": dict(eps=1e-3, momentum=0.01)}


class ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, kernel, stride=1, groups=1, bn=BN_SETTINGS["torch"], act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout, **bn)
        if act:
            self.act = nn.SiLU(inplace=True)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(F.silu(self.reduce(scale)))
        return x * scale.sigmoid()


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole samples' residual branches, rescale survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    return x * mask.bernoulli_(keep).div_(keep)


class MBConv(nn.Module):
    def __init__(self, block: BlockSpec, bn: dict):
        super().__init__()
        mid = block.mid_channels
        self.expand = (ConvBNAct(block.in_channels, mid, 1, bn=bn)
                       if block.expand_ratio != 1 else nn.Identity())
        self.dw = ConvBNAct(mid, mid, block.kernel, block.stride, groups=mid, bn=bn)
        self.se = SqueezeExcite(mid, block.se_channels)
        self.project = ConvBNAct(mid, block.out_channels, 1, bn=bn, act=False)
        self.drop_path_rate = block.drop_path
        self.has_residual = block.has_residual

    def forward(self, x):
        out = self.project(self.se(self.dw(self.expand(x))))
        if self.has_residual:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out


class EfficientNet(nn.Module):
    def __init__(self, spec: ModelSpec, num_classes: int = 1000, *, drop_rate: float | None = None,
                 bn: str = "torch", stem_stride: int = 2, in_chans: int = 3):
        super().__init__()
        if bn not in BN_SETTINGS:
            raise ValueError(f"bn must be one of {sorted(BN_SETTINGS)}, got {bn!r}")
        if num_classes < 1 or in_chans < 1 or stem_stride not in (1, 2):
            raise ValueError("num_classes and in_chans must be >= 1 and stem_stride 1 or 2")
        norm = BN_SETTINGS[bn]
        self.spec = spec
        self.num_classes = num_classes
        self.stem_stride = stem_stride
        self.in_chans = in_chans
        self.bn = bn
        self.grad_checkpointing = False

        self.stem = ConvBNAct(in_chans, spec.stem_channels, 3, stem_stride, bn=norm)
        blocks = list(spec.blocks())
        self.stages = nn.ModuleList(
            nn.Sequential(*(MBConv(b, norm) for b in blocks if b.stage == i))
            for i in range(len(spec.stages)))
        self.head = ConvBNAct(spec.stages[-1].out_channels, spec.head_channels, 1, bn=norm)
        self.drop_rate = spec.dropout if drop_rate is None else drop_rate
        self.dropout = nn.Dropout(self.drop_rate)
        self.classifier = nn.Linear(spec.head_channels, num_classes)

        reduction = stem_stride
        self.feature_info = []
        for i, stage in enumerate(spec.stages):
            reduction *= stage.stride
            self.feature_info.append(dict(stage=i, module=f"stages.{i}",
                                          channels=stage.out_channels, reduction=reduction))
        self.feature_info.append(dict(stage=len(spec.stages), module="head",
                                      channels=spec.head_channels, reduction=reduction))
        self.reset_parameters()

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    def reset_parameters(self) -> None:
        """TF init: conv ~ N(0, 2 / fan_out) with fan_out = k*k*out/groups; FC ~ U(+-1/sqrt(out))."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k_h, k_w = m.kernel_size
                fan_out = k_h * k_w * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def zero_init(self) -> "EfficientNet":
        """Zero the last BatchNorm scale of every residual block and the classifier's weights:
        each block starts as the identity (Goyal et al. 2017, arXiv:1706.02677; torchvision's
        `zero_init_residual`), so a deep stack trains like a shallow one at first, and the
        first predictions are uniform (loss ln C) instead of TF's U(+-1/sqrt(C)) logits, which
        on 10 classes start the loss at 3-5 and grow with the width. A training choice, not
        TF's init: the fast recipe applies it. Digits, 10 epochs, seeds 0 / 1: depth-scaled
        b0@d=3.99,r=0.1652,phi=-6 65.8 / 37.6% -> 96.2 / 94.7% (residual part alone);
        width-scaled b0@w=1.89,r=0.1652,phi=-6 93.1 / 94.2% -> 98.0 / 98.7% (classifier)."""
        for module in self.modules():
            if isinstance(module, MBConv) and module.has_residual:
                nn.init.zeros_(module.project.bn.weight)
        nn.init.zeros_(self.classifier.weight)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "EfficientNet":
        """Recompute each block in backward. RNG state is saved and replayed by
        torch.utils.checkpoint, so stochastic-depth masks are identical on recompute."""
        self.grad_checkpointing = enable
        return self

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False,
                               context_fn=partial(_recompute_without_bn_update, block))
            return x
        return stage(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps (7 stages, then the head's), for CAMs and feature extraction."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = self._run_stage(stage, x)
            features.append(x)
        features.append(self.head(x))
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.head(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean((2, 3))
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for fine-tuning on another class count."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.spec.head_channels, num_classes)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.classifier.weight, -bound, bound)
        nn.init.zeros_(self.classifier.bias)

    def extra_repr(self) -> str:
        return (f"name={self.spec.name!r}, resolution={self.spec.resolution}, "
                f"stem_stride={self.stem_stride}, bn={self.bn!r}")


@contextlib.contextmanager
def _frozen_bn_statistics(module: nn.Module):
    """Recomputing a block in backward must not update BatchNorm running stats a second time:
    momentum 0 keeps them as they are (the batch statistics used for the output are the same)."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def _recompute_without_bn_update(block: nn.Module):
    return contextlib.nullcontext(), _frozen_bn_statistics(block)


def create_model(name: str | ModelSpec, num_classes: int = 1000, *, drop_rate: float | None = None,
                 drop_path_rate: float = 0.2, bn: str = "torch", stem_stride: int = 2,
                 in_chans: int = 3) -> EfficientNet:
    """Build any family member by name ("b3", "b0@d=2", "b0@phi=-1,res=64"), like timm."""
    spec = name if isinstance(name, ModelSpec) else model_spec(name, stem_stride=stem_stride)
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if drop_rate is not None and not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if spec.drop_path_rate != drop_path_rate:
        spec = replace(spec, drop_path_rate=drop_path_rate)
    return EfficientNet(spec, num_classes, drop_rate=drop_rate, bn=bn, stem_stride=stem_stride,
                        in_chans=in_chans)
