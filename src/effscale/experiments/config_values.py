"""The values of a study's config as flags and files spell them: lists of numbers, epochs,
strategies and compound coefficients, parsed with one clear ValueError line each
(re-exported by `experiments.plan`)."""

from __future__ import annotations

import math

from ..model.profile import STRATEGIES


def parse_floats(text, what: str) -> tuple[float, ...]:
    """'2,4' or [2, 4] -> (2.0, 4.0); one clear error otherwise."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {item!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{what}: {item!r} is not finite")
        values.append(value)
    return tuple(values)


def parse_epochs(value) -> int | tuple[int, ...]:
    """12 or '12' -> 12; '12,24,48' or [12, 24, 48] -> (12, 24, 48) (sorted, no repeats):
    several training budgets, one sub-study each."""
    items = value.split(",") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    epochs = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        if isinstance(item, bool):
            raise ValueError(f"epochs: {item!r} is not a whole number")
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"epochs: {item!r} is not a whole number") from None
        if not math.isfinite(number) or number != int(number) or number < 1:
            raise ValueError(f"epochs must be whole numbers >= 1, got {item!r}")
        epochs.append(int(number))
    if not epochs:
        raise ValueError("epochs: no value given")
    epochs = sorted(set(epochs))
    return epochs[0] if len(epochs) == 1 else tuple(epochs)


def parse_strategies(text) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text or ())
    names = tuple(s.strip().lower() for s in items if str(s).strip())
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if not names:
        raise ValueError(f"no strategies given; choose from {', '.join(STRATEGIES)}")
    return tuple(s for s in STRATEGIES if s in names)  # canonical order, no duplicates


def parse_coefficients(text) -> tuple[float, float, float] | None:
    if text is None:
        return None
    values = parse_floats(text, "coefficients")
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ValueError(f"coefficients must be three positive numbers alpha,beta,gamma, "
                         f"got {text!r}")
    return values
