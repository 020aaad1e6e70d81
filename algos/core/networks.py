"""Networks shared by the algorithms: an MLP for vector observations and the Nature CNN
for stacks of 84x84 frames (uint8 in, divided by 255 inside the network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    """Flattened observation -> hidden layers with ReLU -> `outputs`."""

    def __init__(self, in_dim: int, outputs: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for size in hidden_sizes:
            layers += [nn.Linear(last, size), nn.ReLU()]
            last = size
        layers.append(nn.Linear(last, outputs))
        self.body = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of observations."""
        return self.body(obs.flatten(1).float())


class NatureCNN(nn.Module):
    """Mnih et al. (2015): three convolutions and a 512-unit layer over 4x84x84 frames."""

    def __init__(self, in_channels: int, outputs: int, hidden: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64 * 7 * 7, hidden), nn.ReLU(),
                                  nn.Linear(hidden, outputs))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Outputs for a batch of uint8 frame stacks."""
        return self.head(self.features(obs.float() / 255.0))


class GreedyHead(nn.Module):
    """A network's greedy action and its outputs, as an exported agent computes them:
    (argmax, the outputs) for Q-values, (argmax, softmax) for a policy's logits."""

    def __init__(self, net: nn.Module, softmax: bool = False) -> None:
        super().__init__()
        self.net = net
        self.softmax = softmax

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions, Q-values or action probabilities) of a batch of observations."""
        out = self.net(obs)
        if self.softmax:
            out = torch.softmax(out, dim=-1)
        return out.argmax(-1), out


def is_image(space: gym.Space) -> bool:
    """Stacked frames: a uint8 Box of shape (stack, height, width)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(
        space.shape) == 3


def build_network(
    obs_space: gym.spaces.Box, outputs: int, hidden_sizes: Sequence[int], kind: str = "auto"
) -> nn.Module:
    """The network for an observation space: cnn for frame stacks, else mlp."""
    if kind == "auto":
        kind = "cnn" if is_image(obs_space) else "mlp"
    if kind == "cnn":
        return NatureCNN(obs_space.shape[0], outputs)
    if kind == "mlp":
        return MLP(int(np.prod(obs_space.shape)), outputs, hidden_sizes)
    raise ValueError(f"unknown network kind {kind!r}; allowed: auto, mlp, cnn")


@dataclass(frozen=True)
class NetworkFactory:
    """(obs space, action space) -> a network with one output per action; picklable, so
    that rollout workers build the same network as the learner."""

    kind: str
    hidden_sizes: tuple[int, ...]

    def __call__(self, obs_space: gym.spaces.Box, action_space: gym.spaces.Discrete
                 ) -> nn.Module:
        return build_network(obs_space, int(action_space.n), self.hidden_sizes, self.kind)


def check_box_discrete(env: gym.Env, who: str) -> None:
    """Raise ValueError unless the env has Box observations and discrete actions."""
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(f"{who} needs discrete actions; the env has {env.action_space}")
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise ValueError(f"{who} needs Box observations; the env has {env.observation_space}")


def cpu_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (for rollout workers, checkpoints and the best agent: the
    live network trains on)."""
    return {k: t.detach().to("cpu", copy=True) for k, t in net.state_dict().items()}


def resolve_device(device: str) -> torch.device:
    """'auto' is CUDA when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (also after load_state_dict, which
    brings back the one the state was saved with)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
