"""Model names a user can type, parsed into a frozen `Variant`, and back.

Grammar: BASE[@KEY=VALUE,...] with BASE one of b0..b8, l2, and keys
  d, w, r     multiply the base's depth, width and resolution coefficients,
  res         sets the input resolution in pixels (exclusive with r),
  phi         compound scaling: depth x alpha^phi, width x beta^phi, resolution x gamma^phi,
  alpha, beta, gamma   override the paper's compound coefficients (only with phi).
All keys compose multiplicatively, so `b0@phi=-4,d=2` is a valid depth-scaled variant of a
compound-shrunk base. Every problem raises ValueError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .spec import FAMILY, ModelSpec, build_spec, output_stride

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
FLOAT_KEYS = ("d", "w", "r", "phi", "alpha", "beta", "gamma")
KEYS = ("d", "w", "r", "res", "phi", "alpha", "beta", "gamma")


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

    @property
    def depth(self) -> float:
        return FAMILY[self.base].depth * self.d * self.alpha ** self.phi

    @property
    def width(self) -> float:
        return FAMILY[self.base].width * self.w * self.beta ** self.phi

    @property
    def resolution(self) -> int:
        if self.res is not None:
            return self.res
        return int(round(FAMILY[self.base].resolution * self.r * self.gamma ** self.phi))

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
    for key in ("d", "w", "r", "res", "alpha", "beta", "gamma"):
        if key in values and values[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {values[key]} in {name!r}")
    if "r" in values and "res" in values:
        raise ValueError(f"give r (a multiplier) or res (pixels), not both, in {name!r}")
    if "phi" not in values and any(k in values for k in ("alpha", "beta", "gamma")):
        raise ValueError(f"alpha, beta and gamma only apply with phi, in {name!r}")
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
    if variant.width * 1280 < 1 or variant.depth <= 0:
        raise ValueError(f"{variant} scales the network below one channel")
    check_resolution(variant.resolution, stem_stride, str(variant))
    return build_spec(str(variant), variant.width, variant.depth, variant.resolution,
                      FAMILY[variant.base].dropout)
