"""REINFORCE (Monte Carlo policy gradient), course unit 4.

A stochastic policy pi(a | s) (an MLP, or the Nature CNN for frames, ending in a softmax)
plays m full episodes; each step's discounted return-to-go

    G_t = r_t + gamma * r_{t+1} + gamma^2 * r_{t+2} + ...

is optionally standardized within its episode (the course does), and the policy steps
with the estimate (1/m) * sum over episodes of sum_t G_t * grad log pi(a_t | s_t):
gradient ascent on the expected return, written as descent on its negative, with Adam
(its learning rate constant, or decaying linearly to `lr_end` at the last episode).
An optional baseline subtracts the batch's mean return-to-go first (off by default, so the
course's algorithm is what runs). The m episodes of an update are sampled by the rollout
workers at once (with 0 workers, in the learner), always with the current weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from algos.configs import ReinforceConfig
from algos.core import metrics as m
from algos.core.agents import NetworkAgent, NetworkResult
from algos.core.envs import EnvConfig
from algos.core.evaluation import play_episodes
from algos.core.finite import check_finite
from algos.core.networks import (
    NetworkFactory,
    check_box_discrete,
    cpu_weights,
    resolve_device,
    set_lr,
)
from algos.core.reporting import Reporter, Reports
from algos.core.schedules import linear
from algos.core.workers import WorkerPool


def check_spaces(env) -> None:
    """A softmax policy needs discrete actions; the network needs Box observations."""
    check_box_discrete(env, "a softmax policy")


def returns_to_go(rewards: Sequence[float] | np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1}, computed backwards as the course does."""
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def standardize(x: np.ndarray) -> np.ndarray:
    """(x - mean) / (std + eps), eps the float32 epsilon, as the course."""
    return (x - x.mean()) / (x.std(ddof=1) + np.finfo(np.float32).eps) if len(x) > 1 else (
        x - x.mean())


def episode_weights(
    episodes: Sequence[Mapping[str, Any]], gamma: float, standardize_returns: bool,
    baseline: bool,
) -> list[np.ndarray]:
    """Each episode's per-step weights G_t (after the baseline and standardization)."""
    weights = [returns_to_go(ep["rewards"], gamma) for ep in episodes]
    if baseline:
        mean = float(np.concatenate(weights).mean())
        weights = [w - mean for w in weights]
    if standardize_returns:
        weights = [standardize(w) for w in weights]
    return weights


def policy_loss(
    policy: nn.Module, episodes: Sequence[Mapping[str, Any]], gamma: float,
    standardize_returns: bool = True, baseline: bool = False,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean entropy): loss = -(1/m) sum_episodes sum_t G_t log pi(a_t | s_t)."""
    device = device or torch.device("cpu")
    weights = episode_weights(episodes, gamma, standardize_returns, baseline)
    obs = torch.as_tensor(np.concatenate([ep["obs"] for ep in episodes]), device=device)
    actions = torch.as_tensor(np.concatenate([ep["actions"] for ep in episodes]),
                              device=device).long()
    g = torch.as_tensor(np.concatenate(weights), device=device, dtype=torch.float32)
    dist = torch.distributions.Categorical(logits=policy(obs))
    loss = -(dist.log_prob(actions) * g).sum() / len(episodes)
    return loss, dist.entropy().mean()


@torch.no_grad()
def evaluate(
    policy: nn.Module, env_cfg: EnvConfig, seeds: Sequence[int], cfg: ReinforceConfig
) -> tuple[float, float, list[float]]:
    """One episode per reset seed, at most cfg.max_steps steps each, on the policy's
    device, sampling actions from it (its most probable with cfg.eval_greedy):
    (mean, std, returns)."""
    device = next(policy.parameters()).device
    gen = torch.Generator().manual_seed(int(seeds[0]))

    def act(obs: np.ndarray) -> np.ndarray:
        logits = policy(torch.as_tensor(obs, device=device)).cpu()
        if cfg.eval_greedy:
            return logits.argmax(1).numpy()
        probs = torch.softmax(logits, 1)
        return torch.multinomial(probs, 1, generator=gen).squeeze(1).numpy()

    return play_episodes(env_cfg, seeds, act, cfg.max_steps)


def update_policy(
    policy: nn.Module, optimizer: torch.optim.Optimizer,
    episodes: Sequence[Mapping[str, Any]], cfg: ReinforceConfig, device: torch.device,
    env_steps: int,
) -> tuple[float, float]:
    """One gradient step on the episodes' policy loss: (the loss, the mean entropy). A loss
    that is no longer finite (divergence, NaN rewards) stops training before the step
    corrupts the policy (NonFiniteError at `env_steps`, where the episodes end)."""
    loss, entropy = policy_loss(policy, episodes, cfg.gamma, cfg.standardize_returns,
                                cfg.baseline, device)
    check_finite(env_steps, {m.POLICY_LOSS: float(loss.detach())})
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(entropy.detach())


def train(cfg: ReinforceConfig, env_cfg: EnvConfig, seed: int, reporter: Reporter | None = None,
          state: Mapping[str, Any] | None = None) -> NetworkResult:
    """Train a policy; continue from a checkpoint `state` when one is given."""
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    factory = NetworkFactory(cfg.network, tuple(cfg.hidden_sizes))
    pool = WorkerPool.for_run(env_cfg, cfg, factory, seed, state, "episode")
    policy = factory(pool.obs_space, pool.action_space).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    episode = env_steps = updates = 0
    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        set_lr(optimizer, cfg.lr)  # not the saved one: the config may be new (ray#62173)
        episode, env_steps, updates = state["episode"], state["env_steps"], state["updates"]
    eval_seeds = cfg.evaluation_seeds()
    reports = Reports(reporter, cfg.eval_every, cfg.episodes,
                      evaluate=lambda: evaluate(policy, env_cfg, eval_seeds, cfg),
                      weights=lambda: cpu_weights(policy), position=episode, state=state,
                      agent=lambda: NetworkAgent.of(policy, factory, pool.obs_space,
                                                    int(pool.action_space.n), "probabilities"))
    losses, entropies, sources = [], [], []
    try:
        while episode < cfg.episodes:
            if cfg.lr_end is not None:
                set_lr(optimizer, linear(episode, cfg.lr, cfg.lr_end, cfg.episodes))
            pool.set_weights(cpu_weights(policy))
            batches = pool.sample_episodes(min(cfg.episodes_per_update, cfg.episodes - episode),
                                           cfg.max_steps)
            episodes = [ep for batch in batches for ep in batch]
            steps = sum(len(ep["rewards"]) for ep in episodes)
            loss, entropy = update_policy(policy, optimizer, episodes, cfg, device,
                                          env_steps + steps)
            losses.append(loss)
            entropies.append(entropy)
            sources.append(sum(1 for batch in batches if batch))
            for ep in episodes:
                env_steps += len(ep["rewards"])
                reports.episode(env_steps, float(np.sum(ep["rewards"])), ep["ended_at"])
            episode += len(episodes)
            updates += 1
            reports.count(env_steps, episode, steps, updates=1)
            if reports.due(episode):
                reports.report(env_steps, episode, {
                    m.EPISODES: float(episode),
                    m.POLICY_LOSS: float(np.mean(losses)),
                    m.ENTROPY: float(np.mean(entropies)),
                    m.WORKERS_PER_UPDATE: float(np.mean(sources)),
                    m.WORKER_RESTARTS: float(pool.restarts),
                }, {"policy": cpu_weights(policy), "optimizer": optimizer.state_dict(),
                    "episode": episode, "env_steps": env_steps, "updates": updates,
                    "worker_restarts": pool.restarts})
                losses, entropies, sources = [], [], []
    finally:
        pool.close()
    return NetworkResult.of(policy, factory, pool.obs_space, int(pool.action_space.n),
                            reports.metrics, reports.best, outputs="probabilities")
