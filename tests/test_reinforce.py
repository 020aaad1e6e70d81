"""REINFORCE: returns-to-go by hand, the gradient's direction, parallel episodes, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from algos.core.reporting import MemoryReporter
from algos.reinforce import policy_loss, returns_to_go, standardize, train
from pipelines.config.compose import compose_config
from tests.helpers import on_every_seed


def test_returns_to_go_of_a_hand_worked_episode():
    rewards = [1.0, 0.0, 2.0, 1.0]
    # gamma 1: [4, 3, 3, 1]; gamma 0.5: G3 = 1, G2 = 2 + 0.5 = 2.5, G1 = 0 + 1.25 = 1.25,
    # G0 = 1 + 0.625 = 1.625
    assert returns_to_go(rewards, 1.0).tolist() == [4.0, 3.0, 3.0, 1.0]
    assert returns_to_go(rewards, 0.5).tolist() == pytest.approx([1.625, 1.25, 2.5, 1.0])


def test_standardized_returns_have_zero_mean_and_unit_std():
    g = standardize(returns_to_go([1.0, 0.0, 2.0, 1.0], 1.0))
    # [4, 3, 3, 1]: mean 2.75, sample std sqrt(((1.25)^2 + 2 (0.25)^2 + (1.75)^2) / 3)
    std = np.sqrt((1.25**2 + 2 * 0.25**2 + 1.75**2) / 3)
    assert g.tolist() == pytest.approx([(4 - 2.75) / std, (3 - 2.75) / std,
                                        (3 - 2.75) / std, (1 - 2.75) / std], rel=1e-5)
    assert g.mean() == pytest.approx(0.0, abs=1e-9)


class Bandit(nn.Module):
    """A policy over two actions with learnable logits, whatever the observation."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(obs), 2)


def test_one_update_raises_the_action_with_the_positive_return():
    policy = Bandit()
    episodes = [
        {"obs": np.zeros((1, 1), np.float32), "actions": np.array([0]), "rewards": [1.0]},
        {"obs": np.zeros((1, 1), np.float32), "actions": np.array([1]), "rewards": [-1.0]},
    ]
    loss, _ = policy_loss(policy, episodes, gamma=1.0, standardize_returns=False)
    # loss = -(1/2) (1 * log pi(0) - 1 * log pi(1)); at p = [0.5, 0.5] its gradient on the
    # logits is [-0.5, 0.5], so a descent step raises pi(0) and lowers pi(1).
    loss.backward()
    assert policy.logits.grad.tolist() == pytest.approx([-0.5, 0.5])
    torch.optim.SGD(policy.parameters(), lr=0.1).step()
    probs = torch.softmax(policy.logits.detach(), 0)
    assert probs[0] > 0.5 > probs[1]


def test_the_estimate_averages_over_episodes():
    policy = Bandit()
    one = [{"obs": np.zeros((1, 1), np.float32), "actions": np.array([0]), "rewards": [1.0]}]
    loss_one, _ = policy_loss(policy, one, gamma=1.0, standardize_returns=False)
    loss_two, _ = policy_loss(policy, one * 2, gamma=1.0, standardize_returns=False)
    assert float(loss_one) == pytest.approx(float(loss_two))


@pytest.mark.slow  # 2-3 minutes: five seeds, two at a time; REINFORCE sweeps and trains
# in test_pipeline by default
def test_reinforce_passes_the_course_mark_on_every_seed_and_keeps_it_on_most():
    # Every seed 0-4 reaches 475 (the course's mark is 350), and the final policy, not
    # its best, scores 350 or more on four of them. A policy gradient's last updates can
    # still collapse a seed, and which one depends on the CPU's float kernels: seed 1
    # ended at 405.6 on one machine, seed 2 at 117.1 after a 500 on this one's kind. With
    # the course's constant lr and gamma 1 seeds 0 and 1 ended at 161.9 and 147.9 after
    # peaks of 500.
    curves = on_every_seed("cartpole_reinforce", range(5), "eval/score")
    assert all(max(curve) >= 475 for curve in curves.values()), curves
    assert sum(curve[-1] >= 350 for curve in curves.values()) >= 4, curves


def test_with_two_rollout_workers_each_update_averages_episodes_from_both(ray_session):
    cfg = compose_config(["experiment=cartpole_reinforce", "algo.num_rollout_workers=2",
                          "algo.episodes_per_update=4", "algo.episodes=40",
                          "algo.eval_every=20", "algo.eval_episodes=2"]).cfg
    reporter = MemoryReporter()
    train(cfg.algo, cfg.env, seed=0, reporter=reporter)
    assert [r["train/workers_per_update"] for r in reporter.reports] == [2.0, 2.0]
    assert reporter.reports[-1]["train/episodes"] == 40
    assert len(reporter.history["train/episode_return"]) == 40
