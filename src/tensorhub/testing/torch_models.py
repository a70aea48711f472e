"""Small importable torch modules for tests (imports torch: load it only where torch is installed)."""

from __future__ import annotations

import torch


class TinyMLP(torch.nn.Module):
    """A two-layer perceptron that records its constructor arguments for tensorhub."""

    def __init__(self, n_in: int = 4, n_hidden: int = 3, n_out: int = 2) -> None:
        super().__init__()
        self.tensorhub_init_kwargs = {"n_in": n_in, "n_hidden": n_hidden, "n_out": n_out}
        self.hidden = torch.nn.Linear(n_in, n_hidden)
        self.out = torch.nn.Linear(n_hidden, n_out)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))
