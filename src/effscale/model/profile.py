"""Params, MACs, activations and training-activation memory, analytically from a spec (no
model built), and FLOPs matching between scaling strategies.

Convention: MACs are multiply-accumulates of convolutions and the FC layer, which is what the
EfficientNet paper calls FLOPs. `flops` is 2 x MACs, the convention of
torch.utils.flop_counter. BatchNorm, activation functions and pooling are not counted by either.
`activations` is Dollar, Singh & Girshick's (CVPR 2021) runtime proxy, as pycls counts it: the
elements output by every convolution and linear layer for one image (docs/REFERENCE.md,
"Activations [fast]"); not to be confused with `activation_bytes`, what autograd saves.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass

from .names import (MAX_RESOLUTION, Variant, check_fast_alpha, check_resolution, model_spec,
                    parse_name)
from .spec import FAMILY, ModelSpec, conv_out, output_stride

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Profile:
    name: str
    resolution: int
    params: int
    macs: int
    flops: int
    activation_bytes: int  # saved-for-backward activations, whole batch, at `precision`
    batch_size: int = 1
    precision: str = "fp32"
    # conv + linear output elements per image [fast]; last, so positional use stays valid
    activations: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerCounts:
    """One walk of the network, per image: what `profile` and the memory estimate
    (`memory.estimate`) both read, so that they count by one rule.

    Saved elements follow what autograd keeps: a conv+BN+SiLU keeps its conv output (for BN),
    BN output (for SiLU) and SiLU output (for the next conv): 3 maps; conv+BN keeps 2; the SE
    product keeps 1 more (the projection's input).
    """

    params: int
    macs: int
    stem_saved: int  # the input and the stem's 3 maps
    block_saved: tuple[int, ...]  # each block's saved elements
    block_inputs: tuple[int, ...]  # each block's input (all a checkpointed block keeps)
    head_saved: int
    largest: int  # the largest single feature map (input, stem, expanded maps)
    # output elements of every conv and linear layer (SE's 1x1 convs and the FC included) [fast]
    activations: int = 0

    @property
    def saved(self) -> int:
        return self.stem_saved + sum(self.block_saved) + self.head_saved


def count_layers(spec: ModelSpec, resolution: int, num_classes: int, stem_stride: int,
                 in_chans: int) -> LayerCounts:
    size = conv_out(resolution, 3, stem_stride)
    params = 9 * in_chans * spec.stem_channels + 2 * spec.stem_channels
    macs = size * size * 9 * in_chans * spec.stem_channels
    stem = in_chans * resolution * resolution + 3 * spec.stem_channels * size * size
    acts = spec.stem_channels * size * size
    largest = max(in_chans * resolution * resolution, spec.stem_channels * size * size)
    block_saved, block_inputs = [], []
    for b in spec.blocks():
        mid = b.mid_channels
        block_inputs.append(b.in_channels * size * size)
        largest = max(largest, mid * size * size)
        saved = 0
        if b.expand_ratio != 1:
            params += b.in_channels * mid + 2 * mid
            macs += size * size * b.in_channels * mid
            saved += 3 * mid * size * size
            acts += mid * size * size
        size = conv_out(size, b.kernel, b.stride)
        area = size * size
        params += b.kernel * b.kernel * mid + 2 * mid  # depthwise conv + BN
        macs += area * b.kernel * b.kernel * mid
        params += 2 * mid * b.se_channels + b.se_channels + mid  # SE
        macs += 2 * mid * b.se_channels
        params += mid * b.out_channels + 2 * b.out_channels  # projection + BN
        macs += area * mid * b.out_channels
        # depthwise map, SE reduce and expand on the pooled 1x1 map, projection
        acts += mid * area + b.se_channels + mid + b.out_channels * area
        block_saved.append(saved + (3 + 1) * mid * area + 2 * b.out_channels * area)
    last = spec.stages[-1].out_channels
    head = spec.head_channels
    params += last * head + 2 * head + head * num_classes + num_classes
    macs += size * size * last * head + head * num_classes
    acts += head * size * size + num_classes
    return LayerCounts(params, macs, stem, tuple(block_saved), tuple(block_inputs),
                       3 * head * size * size, largest, acts)


def profile(name_or_model, resolution: int | None = None, batch_size: int = 1, *,
            num_classes: int | None = None, stem_stride: int | None = None, in_chans: int | None = None,
            precision: str = "fp32") -> Profile:
    """Params, MACs, FLOPs, activations (conv + FC output elements per image) and training
    activation memory of a name, spec or EfficientNet."""
    if isinstance(name_or_model, (str, Variant, ModelSpec)):
        spec = (name_or_model if isinstance(name_or_model, ModelSpec)
                else model_spec(name_or_model, stem_stride=stem_stride or 2))
        defaults = dict(num_classes=1000, stem_stride=2, in_chans=3)
    else:  # an EfficientNet: its own settings are the defaults
        spec = name_or_model.spec
        defaults = dict(num_classes=name_or_model.num_classes,
                        stem_stride=name_or_model.stem_stride, in_chans=name_or_model.in_chans)
    num_classes = num_classes or defaults["num_classes"]
    stem_stride = stem_stride or defaults["stem_stride"]
    in_chans = in_chans or defaults["in_chans"]
    resolution = int(resolution or spec.resolution)
    check_resolution(resolution, stem_stride, spec.name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, got {precision!r}")
    counts = count_layers(spec, resolution, num_classes, stem_stride, in_chans)
    return Profile(spec.name, resolution, counts.params, counts.macs, 2 * counts.macs,
                   counts.saved * BYTES[precision] * batch_size, batch_size, precision,
                   activations=counts.activations)


def macs_of(name: str | Variant, *, stem_stride: int = 2, num_classes: int = 1000,
            in_chans: int = 3) -> int:
    return profile(name, stem_stride=stem_stride, num_classes=num_classes, in_chans=in_chans).macs


# -- matching FLOPs between strategies -------------------------------------------------------

DIMENSIONS = ("depth", "width", "resolution", "compound", "fast")
# fast: fast compound scaling (Dollar, Singh & Girshick 2021), model.names.fast_factors
# what a study compares: the unscaled base, then each way of scaling it (in report order)
STRATEGIES = ("baseline",) + DIMENSIONS
STEP = 0.01  # grid of d, w and phi: the names stay short and every value is reachable


@dataclass(frozen=True)
class Match:
    name: str
    dimension: str
    macs: int
    target_macs: int
    ratio: float  # achieved / target

    @property
    def within(self) -> float:
        return abs(self.ratio - 1.0)


def _free_resolution(base: Variant) -> Variant:
    """The base with its fixed res re-expressed as the multiplier r, so that a strategy that
    scales the resolution (compound's gamma, fast's s) can move it."""
    if base.res is None:
        return base
    return base.with_(res=None, r=base.res / (FAMILY[base.base].resolution
                                               * base.gamma ** base.phi))


def _variant(base: Variant, dimension: str, value: float | int) -> Variant:
    if dimension == "depth":
        return base.with_(d=round(base.d * value, 4))
    if dimension == "width":
        return base.with_(w=round(base.w * value, 4))
    if dimension == "compound":
        return _free_resolution(base).with_(phi=round(base.phi + value, 4))
    if dimension == "fast":
        return _free_resolution(base).with_(fast=round(base.fast * value, 4))
    return base.with_(res=int(value), r=1.0)


def _grid(dimension: str, stem_stride: int):
    """The values match_flops searches along a dimension, in increasing MACs."""
    if dimension == "resolution":
        return range(output_stride(stem_stride), MAX_RESOLUTION + 1)
    if dimension == "compound":
        return [round(-12 + STEP * i, 4) for i in range(int(24 / STEP) + 1)]
    if dimension == "fast":  # s is a FLOPs factor: up to 64x the base's MACs
        return [round(STEP * i, 4) for i in range(1, int(64 / STEP) + 1)]
    return [round(STEP * i, 4) for i in range(1, int(12 / STEP) + 1)]


def match_flops(base: str | Variant, dimension: str, target_macs: float, *,
                stem_stride: int = 2, num_classes: int = 1000, in_chans: int = 3,
                fast_alpha: float | None = None) -> Match:
    """The variant of `base` scaled along one dimension whose MACs are closest to the target.

    depth, width, compound and fast search a 0.01 grid of the multiplier (of phi, added to
    the base's; of fast's FLOPs factor s, with `fast_alpha`, default 0.8), resolution
    searches whole pixels. MACs never decrease along any of them (up to
    the channel rounding), so a bisection finds the crossing and its neighbours are compared.
    Depth moves in whole blocks, so it can land further than 2% away: `ratio` says how far.
    """
    variant = base if isinstance(base, Variant) else parse_name(base)
    if fast_alpha is not None:
        if dimension != "fast":
            raise ValueError("fast_alpha only applies to the fast dimension")
        check_fast_alpha(fast_alpha)
        variant = variant.with_(fast_alpha=fast_alpha)
    if dimension not in DIMENSIONS:
        raise ValueError(f"dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    if not target_macs > 0:
        raise ValueError(f"target_macs must be > 0, got {target_macs}")
    grid = _grid(dimension, stem_stride)
    cache: dict[int, int | None] = {}

    def macs_at(i: int) -> int | None:
        if i not in cache:
            try:
                cache[i] = macs_of(_variant(variant, dimension, grid[i]), stem_stride=stem_stride,
                                   num_classes=num_classes, in_chans=in_chans)
            except ValueError:  # e.g. a compound step that makes the resolution too small
                cache[i] = None
        return cache[i]

    class _Keys:  # lazy sequence for bisect; invalid (too small) points sort first
        def __len__(self):
            return len(grid)

        def __getitem__(self, i):
            value = macs_at(i)
            return -1 if value is None else value

    crossing = bisect.bisect_left(_Keys(), target_macs)
    candidates = [i for i in range(crossing - 3, crossing + 4)
                  if 0 <= i < len(grid) and macs_at(i) is not None]
    if not candidates:
        raise ValueError(f"no {dimension} variant of {variant} is valid near {target_macs:.3g} MACs")
    best = min(candidates, key=lambda i: (abs(macs_at(i) - target_macs), i))
    # MACs are flat between rounding steps: name the smallest value that builds this network
    while best > 0 and macs_at(best - 1) == macs_at(best):
        best -= 1
    chosen = _variant(variant, dimension, grid[best])
    return Match(str(chosen), dimension, macs_at(best), int(target_macs),
                 macs_at(best) / target_macs)
