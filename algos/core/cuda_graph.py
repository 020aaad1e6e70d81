"""One training step replayed as a CUDA graph: a single launch instead of dozens.

A small network's update (a forward, the loss, a backward, a gradient clip and Adam) is
dozens of kernels of a few microseconds each, and the CPU that launches them, not the
GPU, sets the pace. Captured once as a CUDA graph, the step replays with one launch; its
inputs are copied into fixed (static) tensors first. PyTorch's whole-network capture:
https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

WARMUP_STEPS = 3
"""Eager steps on a side stream before capture (cuBLAS/cuDNN workspaces, Adam's state)."""


def _snapshot(modules: list[nn.Module], optimizer: torch.optim.Optimizer):
    weights = [[t.detach().clone() for t in m.state_dict().values()] for m in modules]
    state = {id(p): {k: v.detach().clone() if torch.is_tensor(v) else v
                     for k, v in s.items()} for p, s in optimizer.state.items()}
    return weights, state


@torch.no_grad()
def _restore(snapshot, modules: list[nn.Module], optimizer: torch.optim.Optimizer) -> None:
    """Put back the weights and optimizer state of before the warm-up, in place (the graph
    holds the tensors' addresses). State the warm-up created is reset to what a fresh
    optimizer starts from: zeros (Adam's step counter and moments)."""
    weights, state = snapshot
    for m, saved in zip(modules, weights, strict=True):
        for t, v in zip(m.state_dict().values(), saved, strict=True):
            t.copy_(v)
    for p, s in optimizer.state.items():
        before = state.get(id(p))
        for k, v in s.items():
            if not torch.is_tensor(v):
                continue
            if before is None:
                v.zero_()
            else:
                v.copy_(before[k])


class GraphedStep:
    """`step(**inputs) -> Tensor` captured as a CUDA graph; calling it copies the inputs
    into the static tensors and replays. The returned tensor is overwritten by the next
    call (clone it to keep it). Weights and optimizer state are as before capture."""

    def __init__(
        self,
        step: Callable[..., torch.Tensor],
        example: dict[str, torch.Tensor],
        modules: list[nn.Module],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.static = {k: v.detach().clone() for k, v in example.items()}
        snapshot = _snapshot(modules, optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(**self.static)
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)  # gradients are allocated by the graph
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = step(**self.static)
        _restore(snapshot, modules, optimizer)

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        for key, value in inputs.items():
            self.static[key].copy_(value, non_blocking=True)
        self.graph.replay()
        return self.out
