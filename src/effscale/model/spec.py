"""The EfficientNet family as frozen data: no torch here.

A `ModelSpec` says everything needed to build or count a network: per-stage block settings
after the TF rounding rules, stem and head widths, input resolution and regularisation rates.
Scaling is a pure function from coefficients to a spec, so MACs of any variant can be known
(and matched) before a tensor exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Squeeze-excitation width as a fraction of the *block input* channels (not the expanded ones).
SE_RATIO = 0.25
DEFAULT_DROP_PATH_RATE = 0.2


@dataclass(frozen=True)
class StageSpec:
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    width: float
    depth: float
    resolution: int
    stem_channels: int
    head_channels: int
    stages: tuple[StageSpec, ...]
    dropout: float
    drop_path_rate: float = DEFAULT_DROP_PATH_RATE
    se_ratio: float = SE_RATIO

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    def blocks(self):
        """Yield a BlockSpec per block, in forward order.

        Only the first block of a stage changes stride and channel count.
        """
        index = 0
        for stage_index, stage in enumerate(self.stages):
            for j in range(stage.repeats):
                in_ch = stage.in_channels if j == 0 else stage.out_channels
                yield BlockSpec(
                    index=index,
                    stage=stage_index,
                    in_channels=in_ch,
                    out_channels=stage.out_channels,
                    expand_ratio=stage.expand_ratio,
                    kernel=stage.kernel,
                    stride=stage.stride if j == 0 else 1,
                    drop_path=self.drop_path_rate * index / self.num_blocks,
                    se_channels=max(1, int(in_ch * self.se_ratio)),
                )
                index += 1


@dataclass(frozen=True)
class BlockSpec:
    index: int
    stage: int
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int
    drop_path: float  # TF schedule: base_rate * global_index / total_blocks
    se_channels: int

    @property
    def mid_channels(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


# B0, paper Table 1: (expand, kernel, stride, out_channels, repeats) per stage.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
B0_STEM = 32
B0_HEAD = 1280


@dataclass(frozen=True)
class FamilyMember:
    width: float
    depth: float
    resolution: int
    dropout: float


# The released coefficients (hand-rounded by the authors, not alpha^phi for any phi).
FAMILY = {
    "b0": FamilyMember(1.0, 1.0, 224, 0.2),
    "b1": FamilyMember(1.0, 1.1, 240, 0.2),
    "b2": FamilyMember(1.1, 1.2, 260, 0.3),
    "b3": FamilyMember(1.2, 1.4, 300, 0.3),
    "b4": FamilyMember(1.4, 1.8, 380, 0.4),
    "b5": FamilyMember(1.6, 2.2, 456, 0.4),
    "b6": FamilyMember(1.8, 2.6, 528, 0.5),
    "b7": FamilyMember(2.0, 3.1, 600, 0.5),
    "b8": FamilyMember(2.2, 3.6, 672, 0.5),
    "l2": FamilyMember(4.3, 5.3, 800, 0.5),
}

# Paper's FLOPs column (their convention: multiply-accumulates), for side-by-side tables.
PAPER_FLOPS = {"b0": 0.39e9, "b1": 0.70e9, "b2": 1.0e9, "b3": 1.8e9, "b4": 4.2e9,
               "b5": 9.9e9, "b6": 19e9, "b7": 37e9}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF reference rounding: nearest multiple of 8, never more than 10% below the target."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    # A tiny epsilon keeps e.g. 1.1 * 10 (= 11.000000000000002) from becoming 12.
    return max(1, int(math.ceil(depth * repeats - 1e-9)))


def build_spec(name: str, width: float, depth: float, resolution: int, dropout: float,
               drop_path_rate: float = DEFAULT_DROP_PATH_RATE) -> ModelSpec:
    """Scale B0 by (width, depth) and attach the resolution: the one place scaling happens."""
    stem = round_filters(B0_STEM, width)
    stages = []
    in_ch = stem
    for expand, kernel, stride, out, repeats in B0_STAGES:
        out_ch = round_filters(out, width)
        stages.append(StageSpec(expand, kernel, stride, in_ch, out_ch,
                                round_repeats(repeats, depth)))
        in_ch = out_ch
    return ModelSpec(
        name=name, width=width, depth=depth, resolution=int(resolution),
        stem_channels=stem, head_channels=round_filters(B0_HEAD, width),
        stages=tuple(stages), dropout=dropout, drop_path_rate=drop_path_rate,
    )


def output_stride(stem_stride: int = 2) -> int:
    return stem_stride * math.prod(s[2] for s in B0_STAGES)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a conv padded by (k - 1) // 2, as torchvision and timm pad."""
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def stage_resolutions(spec: ModelSpec, resolution: int | None = None,
                      stem_stride: int = 2) -> list[int]:
    """Feature-map side after the stem and after each stage."""
    size = conv_out(resolution or spec.resolution, 3, stem_stride)
    sizes = [size]
    for stage in spec.stages:
        size = conv_out(size, stage.kernel, stage.stride)
        sizes.append(size)
    return sizes


def final_map_size(spec: ModelSpec, resolution: int | None = None, stem_stride: int = 2) -> int:
    """Side of the last feature map (the head's input) at `resolution` px."""
    return stage_resolutions(spec, resolution, stem_stride)[-1]


def min_resolution(spec: ModelSpec, map_size: int, stem_stride: int = 2) -> int:
    """The smallest input side that leaves a final feature map of map_size x map_size or more."""
    res = map_size
    while final_map_size(spec, res, stem_stride) < map_size:
        res += 1
    return res


def small_map_cures(spec: ModelSpec, resolution: int, stem_stride: int, map_size: int) -> str:
    """The two cures for a final feature map below map_size x map_size, with the numbers for
    this model: a larger input, or a stride-1 stem."""
    need = min_resolution(spec, map_size, stem_stride)
    at_224 = final_map_size(spec, 224, stem_stride)
    cures = [f"upsample the input to >= {need} px (e.g. res=224, as the paper trains B0: "
             f"{at_224}x{at_224})"]
    if stem_stride == 2:
        one = final_map_size(spec, resolution, 1)
        cures.append(f"build the model with stem_stride=1 (final map {one}x{one} at {resolution} "
                     f"px, >= {map_size}x{map_size} from {min_resolution(spec, map_size, 1)} px)")
    return "cures: " + "; or ".join(cures)
