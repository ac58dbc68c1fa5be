"""Model names a user can type, parsed into a frozen `Variant`, and back.

Grammar: BASE[@KEY=VALUE,...] with BASE one of b0..b8, l2, and keys
  d, w, r     multiply the base's depth, width and resolution coefficients,
  res         sets the input resolution in pixels (exclusive with r),
  phi         compound scaling: depth x alpha^phi, width x beta^phi, resolution x gamma^phi,
  alpha, beta, gamma   override the paper's compound coefficients (only with phi),
  fast        fast compound scaling by a FLOPs factor s (Dollar, Singh & Girshick 2021):
              depth x s^((1-a)/2), width x s^(a/2), resolution x s^((1-a)/4),
  fast_alpha  its a, in [1/3, 1] (default 0.8, the paper's dWr; 1/3 is uniform, 1 width only).
All keys compose multiplicatively, so `b0@phi=-4,d=2` is a valid depth-scaled variant of a
compound-shrunk base. Every problem raises ValueError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .spec import FAMILY, ModelSpec, build_spec, output_stride

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
FAST_ALPHA = 0.8  # Dollar et al.'s recommended fast compound scaling (dWr)
KEYS = ("d", "w", "r", "res", "phi", "alpha", "beta", "gamma", "fast", "fast_alpha")

# What a name may ask for. Far beyond any published member (L2: depth 5.3, width 4.3, 800 px)
# and every match_flops grid, yet small enough that each count stays exact and quick: without
# them alpha ** 1e4 overflows a float and a depth of 1e300 enumerates 1e300 blocks.
MAX_DEPTH = MAX_WIDTH = 100.0     # the final depth and width coefficients
MAX_RESOLUTION = 8192             # pixels, the final input side
LIMITS = {"d": (0, 100), "w": (0, 100), "r": (0, 100), "res": (0, MAX_RESOLUTION),
          "phi": (-100, 100), "alpha": (0.1, 10), "beta": (0.1, 10), "gamma": (0.1, 10),
          "fast": (0, 1e6)}
OPEN_BELOW = ("d", "w", "r", "res", "fast")  # must be > their lower limit
POSITIVE = ("d", "w", "r", "res", "alpha", "beta", "gamma", "fast")


def fast_factors(s: float, a: float = FAST_ALPHA) -> tuple[float, float, float]:
    """Depth, width and resolution multipliers of fast compound scaling by FLOPs factor s
    (Dollar, Singh & Girshick, CVPR 2021, Eq. 5): d * w^2 * r^2 == s for every a."""
    return s ** ((1 - a) / 2), s ** (a / 2), s ** ((1 - a) / 4)


def check_fast_alpha(a: float, where: str = "") -> None:
    """fast_alpha spans uniform compound (1/3) to width only (1); names print 6 digits."""
    if not 1 / 3 - 1e-6 <= a <= 1:
        raise ValueError(f"fast_alpha must be in [1/3, 1] (1/3: uniform compound, 1: width "
                         f"only), got {a:g}{where}")


@dataclass(frozen=True)
class Variant:
    base: str
    d: float = 1.0
    w: float = 1.0
    r: float = 1.0
    res: int | None = None
    phi: float = 0.0
    alpha: float = ALPHA
    beta: float = BETA
    gamma: float = GAMMA
    fast: float = 1.0
    fast_alpha: float = FAST_ALPHA

    @property
    def depth(self) -> float:
        fd = fast_factors(self.fast, self.fast_alpha)[0]
        return FAMILY[self.base].depth * self.d * self.alpha ** self.phi * fd

    @property
    def width(self) -> float:
        fw = fast_factors(self.fast, self.fast_alpha)[1]
        return FAMILY[self.base].width * self.w * self.beta ** self.phi * fw

    @property
    def resolution(self) -> int:
        if self.res is not None:  # parse_name refuses res with fast: res is final pixels
            return self.res
        fr = fast_factors(self.fast, self.fast_alpha)[2]
        return int(round(FAMILY[self.base].resolution * self.r * self.gamma ** self.phi * fr))

    def with_(self, **changes) -> "Variant":
        return replace(self, **changes)

    def __str__(self) -> str:
        defaults = Variant(self.base)
        parts = []
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            if f.name in ("alpha", "beta", "gamma") and self.phi == 0:
                continue
            if f.name == "fast_alpha" and self.fast == 1:
                continue
            parts.append(f"{f.name}={_fmt(value)}")
        return self.base + ("@" + ",".join(parts) if parts else "")


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def _number(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{key}={text!r} must be finite")
    return value


def _check_limits(values: dict, name: str) -> None:
    for key, value in values.items():
        low, high = LIMITS.get(key, (-math.inf, math.inf))
        if value <= 0 and key in POSITIVE:
            raise ValueError(f"{key} must be > 0, got {value} in {name!r}")
        if not low <= value <= high or (value == low and key in OPEN_BELOW):
            span = f"{'(' if key in OPEN_BELOW else '['}{low:g}, {high:g}]"
            raise ValueError(f"{name!r} scales the network out of range: {key} must be in "
                             f"{span}, got {value:g}")


def parse_name(name: str) -> Variant:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("empty model name; try b0 ... b7, b8, l2 or b0@phi=1")
    text = name.strip().lower()
    for prefix in ("efficientnet_", "efficientnet-"):
        text = text.removeprefix(prefix)
    base, _, options = text.partition("@")
    if base not in FAMILY:
        raise ValueError(f"unknown base model {base!r} in {name!r}; "
                         f"choose one of {', '.join(FAMILY)}")
    values: dict[str, float | int] = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise ValueError(f"{item!r} in {name!r} is not KEY=VALUE")
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r} in {name!r}; known keys: {', '.join(KEYS)}")
        if key in values:
            raise ValueError(f"key {key!r} given twice in {name!r}")
        value = _number(key, raw)
        if key == "res":
            if value != int(value):
                raise ValueError(f"res={raw} must be a whole number of pixels")
            value = int(value)
        values[key] = value
    if options and not values:
        raise ValueError(f"{name!r} has '@' but no KEY=VALUE after it")
    _check_limits(values, name)
    if "r" in values and "res" in values:
        raise ValueError(f"give r (a multiplier) or res (pixels), not both, in {name!r}")
    if "phi" not in values and any(k in values for k in ("alpha", "beta", "gamma")):
        raise ValueError(f"alpha, beta and gamma only apply with phi, in {name!r}")
    if "fast_alpha" in values:
        if "fast" not in values:
            raise ValueError(f"fast_alpha only applies with fast, in {name!r}")
        check_fast_alpha(values["fast_alpha"], f" in {name!r}")
    if "fast" in values and "res" in values:
        raise ValueError(f"fast scales the resolution: give r (a multiplier) instead of res "
                         f"(pixels), in {name!r}")
    return Variant(base, **values)


def check_resolution(resolution: int, stem_stride: int = 2, what: str = "") -> None:
    minimum = output_stride(stem_stride)
    if resolution < minimum:
        raise ValueError(
            f"resolution {resolution}{' of ' + what if what else ''} is too small: the network "
            f"downsamples by {minimum}, so it needs at least {minimum} px to leave a 1x1 final "
            f"feature map")


def model_spec(name: str | Variant, *, stem_stride: int = 2) -> ModelSpec:
    """Frozen, torch-free description of a model name (see `ModelSpec`)."""
    variant = name if isinstance(name, Variant) else parse_name(name)
    try:
        width, depth, resolution = variant.width, variant.depth, variant.resolution
    except (OverflowError, ValueError):  # a Variant built directly, past parse_name's limits
        raise ValueError(f"{variant} scales the network out of range: beyond any size "
                         f"that can be counted") from None
    if width * 1280 < 1 or depth <= 0:
        raise ValueError(f"{variant} scales the network below one channel")
    for what, value, limit in (("depth", depth, MAX_DEPTH), ("width", width, MAX_WIDTH),
                               ("resolution", resolution, MAX_RESOLUTION)):
        if not value <= limit:
            raise ValueError(f"{variant} scales the network out of range: {what} {value:.4g} "
                             f"is above the limit {limit:g} (L2, the largest published "
                             f"member, has depth 5.3, width 4.3, 800 px)")
    check_resolution(resolution, stem_stride, str(variant))
    return build_spec(str(variant), width, depth, resolution, FAMILY[variant.base].dropout)
