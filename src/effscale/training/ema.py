"""Exponential moving average of a model's weights (and BN statistics).

The decay follows TF's ExponentialMovingAverage with num_updates, as in the EfficientNet
reference: decay_t = min(decay, (1 + t) / (10 + t)). Early on the average forgets fast, so a
short run's EMA is not stuck near the random init: after t updates it averages roughly the
last t / 9 steps, i.e. the last ~10% of a run shorter than 1 / (1 - decay) steps, and the
full 1 / (1 - decay) window afterwards. 0.9999 (a 10,000-step window) only bites in long runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        averaged, copied_to, copied_from = [], [], []
        model_state = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = model_state[name]
            if ema_value.is_floating_point():
                averaged.append((ema_value, value))
            else:  # BN's num_batches_tracked: follow the model
                copied_to.append(ema_value)
                copied_from.append(value)
        if averaged:
            ema_values, values = zip(*averaged)
            torch._foreach_lerp_(list(ema_values), list(values), 1.0 - decay)
        for dst, src in zip(copied_to, copied_from):
            dst.copy_(src)

    def state_dict(self) -> dict:
        return dict(module=self.module.state_dict(), updates=self.updates, decay=self.decay)

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
