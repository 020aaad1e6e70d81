"""REINFORCE (Monte Carlo policy gradient), course unit 4.

A stochastic policy pi(a | s) (an MLP, or the Nature CNN for frames, ending in a softmax)
plays m full episodes; each step's discounted return-to-go

    G_t = r_t + gamma * r_{t+1} + gamma^2 * r_{t+2} + ...

is optionally standardized within its episode (the course does), and the policy steps
with the estimate (1/m) * sum over episodes of sum_t G_t * grad log pi(a_t | s_t):
gradient ascent on the expected return, written as descent on its negative, with Adam.
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
from algos.core.agents import Best, NetworkResult
from algos.core.envs import EnvConfig
from algos.core.evaluation import play_episodes
from algos.core.finite import check_finite
from algos.core.networks import NetworkFactory, check_box_discrete, cpu_weights, resolve_device
from algos.core.reporting import NullReporter, Reporter
from algos.core.timing import Stopwatch
from algos.core.workers import WorkerPool

ReinforceResult = NetworkResult
"""What a finished run leaves: the final policy as an agent, its metrics, its best weights."""


def check_spaces(env) -> None:
    """A softmax policy needs discrete actions; the network needs Box observations."""
    check_box_discrete(env, "a softmax policy")


def returns_to_go(rewards: Sequence[float], gamma: float) -> np.ndarray:
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
    episodes: Sequence[Mapping[str, np.ndarray]], gamma: float, standardize_returns: bool,
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
    policy: nn.Module, episodes: Sequence[Mapping[str, np.ndarray]], gamma: float,
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


def train(
    cfg: ReinforceConfig,
    env_cfg: EnvConfig,
    seed: int,
    reporter: Reporter | None = None,
    state: Mapping[str, Any] | None = None,
) -> ReinforceResult:
    """Train a policy; continue from a checkpoint `state` when one is given."""
    reporter = reporter or NullReporter()
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    factory = NetworkFactory(cfg.network, tuple(cfg.hidden_sizes))
    # A resumed run's workers start new streams (seeded by where it resumes), not replays.
    pool = WorkerPool(env_cfg, cfg.num_rollout_workers, cfg.envs_per_worker, factory, seed,
                      start=state["episode"] if state else 0,
                      max_restarts=cfg.max_worker_restarts)
    obs_space = pool.obs_space
    policy = factory(obs_space, pool.action_space).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    episode = env_steps = updates = 0
    best = Best()
    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        episode, env_steps, updates = state["episode"], state["env_steps"], state["updates"]
        pool.restarts = state.get("worker_restarts", 0)
        best = Best.restore(state.get("best"))
    returns: list[tuple[int, float, float]] = []  # (step, return, wall time)
    losses, entropies, sources = [], [], []
    watch = Stopwatch()
    steps_since = 0
    next_eval = (episode // cfg.eval_every + 1) * cfg.eval_every
    eval_seeds = cfg.evaluation_seeds()
    metrics: dict[str, float] = {}
    try:
        while episode < cfg.episodes:
            m = min(cfg.episodes_per_update, cfg.episodes - episode)
            pool.set_weights(cpu_weights(policy))
            batches = pool.sample_episodes(m, cfg.max_steps)
            eps = [ep for b in batches for ep in b]
            sources.append(len([b for b in batches if b]))
            loss, entropy = policy_loss(policy, eps, cfg.gamma, cfg.standardize_returns,
                                        cfg.baseline, device)
            losses.append(float(loss.detach()))
            # Diverged (or NaN rewards): stop before the step corrupts the policy.
            check_finite(env_steps + sum(len(ep["rewards"]) for ep in eps),
                         {"loss/policy": losses[-1]})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            entropies.append(float(entropy.detach()))
            for ep in eps:
                env_steps += len(ep["rewards"])
                steps_since += len(ep["rewards"])
                returns.append((env_steps, float(np.sum(ep["rewards"])), ep["ended_at"]))
            episode += len(eps)
            final = episode >= cfg.episodes
            if episode >= next_eval or final:
                seconds = watch.lap()
                mean, std, _ = evaluate(policy, env_cfg, eval_seeds, cfg)
                metrics = {
                    "train/episodes": float(episode),
                    "eval/mean_return": mean,
                    "eval/std_return": std,
                    "eval/score": mean - std,
                    "loss/policy": float(np.mean(losses)),
                    "train/entropy": float(np.mean(entropies)),
                    "train/workers_per_update": float(np.mean(sources)),
                    "train/worker_restarts": float(pool.restarts),
                    "perf/env_steps_per_s": steps_since / seconds if seconds else 0.0,
                    "perf/updates_per_s": len(losses) / seconds if seconds else 0.0,
                }
                best.offer(mean - std, env_steps, lambda: cpu_weights(policy))
                checkpoint = {
                    "best": best.state(),
                    "policy": cpu_weights(policy),
                    "optimizer": optimizer.state_dict(),
                    "episode": episode, "env_steps": env_steps, "updates": updates,
                    "worker_restarts": pool.restarts,
                }
                reporter.report(env_steps, metrics, history={"train/episode_return": returns},
                                state=checkpoint, final=final)
                while next_eval <= episode:
                    next_eval += cfg.eval_every
                returns, losses, entropies, sources = [], [], [], []
                steps_since = 0
                watch.lap()
    finally:
        pool.close()
    return ReinforceResult.of(policy, factory, obs_space, int(pool.action_space.n), metrics,
                              best)
