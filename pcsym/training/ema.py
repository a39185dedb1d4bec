"""Exponential moving average of the weights (``pcsym train --ema DECAY``).

After every optimiser step the average moves towards the trained weights:
``average = decay * average + (1 - decay) * weights``; validation, best.pt and last.pt's ``state_dict``
use the average (with batch-norm statistics re-estimated for it), training continues from the
trained weights. An average of equivariant weights is equivariant: the linear maps' bases are fixed,
only their coefficients are averaged.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """The running average of a model's trainable parameters.

    ``swap()`` exchanges the model's weights and the average: between the two calls of a pair the
    model holds the average (``swapped``), so evaluating or saving it needs no second model."""

    def __init__(self, model: nn.Module, decay: float):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.decay = decay
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0
        self.swapped = False

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the model's current weights (call after ``optimizer.step()``)."""
        if self.swapped:
            raise RuntimeError("the model holds the average; swap() back before training")
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        for p, s in zip(self.params, self.shadow):
            held = p.detach().clone()
            p.copy_(s)
            s.copy_(held)
        self.swapped = not self.swapped

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average afresh from the model's current weights."""
        for p, s in zip(self.params, self.shadow):
            s.copy_(p)
        self.updates, self.swapped = 0, False

    def state(self) -> dict:
        """What a checkpoint needs to continue the run: the tensors the model does not hold now."""
        return {"decay": self.decay, "updates": self.updates, "swapped": self.swapped,
                "shadow": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)}}

    @torch.no_grad()
    def load(self, state: dict) -> None:
        """Restore :meth:`state` (the model's own weights are loaded from the same checkpoint first)."""
        shadow = state["shadow"]
        if sorted(shadow) != sorted(self.names):
            raise ValueError("the checkpoint's weight average does not match the model's parameters")
        for n, s in zip(self.names, self.shadow):
            s.copy_(shadow[n])
        self.updates, self.swapped = int(state["updates"]), bool(state["swapped"])
