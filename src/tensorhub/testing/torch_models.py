"""Small importable torch modules for tests (imports torch: load it only where torch is installed)."""

from __future__ import annotations

from typing import Any

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


class DtypeZoo(torch.nn.Module):
    """Parameters and buffers of dtypes numpy lacks (bfloat16) or handles specially (0-d, bool, int64).

    Also a BatchNorm (running statistics, an int64 counter), a non-persistent buffer and a
    constant made in ``forward``, which ``torch.export`` lifts into the program's constants.
    """

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.tensorhub_init_kwargs = {"n": n}
        self.linear = torch.nn.Linear(n, n)
        self.norm = torch.nn.BatchNorm1d(n)
        self.fp16 = torch.nn.Parameter(torch.randn(n, dtype=torch.float16))
        self.register_buffer("brain", torch.randn(n, n).to(torch.bfloat16))
        self.register_buffer("mask", torch.rand(n) > 0.5)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("scale", torch.full((n,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.linear(x)) * self.scale + self.fp16.float() + self.brain.float().sum(0)
        return torch.where(self.mask, y, -y) + torch.tensor([0.5])


class WithExtraState(torch.nn.Module):
    """A module whose state dict holds a Python object (``get_extra_state``): only pickle stores it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.vocabulary: Any = {"a": 1}

    def get_extra_state(self) -> Any:
        return self.vocabulary

    def set_extra_state(self, state: Any) -> None:
        self.vocabulary = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
