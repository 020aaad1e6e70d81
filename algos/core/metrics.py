"""Metric names: every series an algorithm logs, named once (as RLlib's
ray.rllib.utils.metrics). The pipelines' own series (a sweep's perf/* timings, its
summary's best/<env>/*) are named where they are made.

The prefix says what a series is: `train/` what training did, `eval/` the evaluations,
`test/` the best agent on held-out seeds, `loss/` the learner's losses, `perf/`
throughput. Every step is env steps sampled so far.
"""

from __future__ import annotations

EPISODE_RETURN = "train/episode_return"
"""Return of each finished training episode (a whole game on Atari)."""
EPISODE_RETURN_MEAN = "train/episode_return_mean"
"""Mean return of the training episodes that ended since the last report."""
ENV_STEPS = "train/env_steps"
"""Env steps sampled so far (the step of every point)."""
EPISODES = "train/episodes"
"""Training episodes played so far (the budget of Q-learning and REINFORCE)."""
UPDATES = "train/updates"
"""Gradient steps taken so far (DQN)."""
EPSILON = "train/epsilon"
"""Exploration rate in use."""
Q_MEAN = "train/q_mean"
"""Mean predicted Q-value (of the table, or of the actions taken in DQN's minibatches)."""
ENTROPY = "train/entropy"
"""Mean entropy of the policy over the steps of an update (REINFORCE)."""
WORKERS_PER_UPDATE = "train/workers_per_update"
"""Rollout workers whose episodes went into an update, on average (REINFORCE)."""
WORKER_RESTARTS = "train/worker_restarts"
"""Rollout workers that died and were replaced so far."""

EVAL_PREFIX = "eval/"
"""The prefix of the evaluations' series (a logged model carries its step's)."""
EVAL_MEAN_RETURN = "eval/mean_return"
"""Mean return of the evaluation episodes."""
EVAL_STD_RETURN = "eval/std_return"
"""Standard deviation of the evaluation episodes' returns."""
EVAL_SCORE = "eval/score"
"""mean - std of the evaluation returns: the course's pass figure (see score)."""

TEST_PREFIX = "test/"
"""The prefix of the held-out test: the run's best agent played once, at the run's end,
on seeds that no evaluation played (so no selection saw them)."""
TEST_MEAN_RETURN = "test/mean_return"
"""Mean return of the best agent on the held-out seeds."""
TEST_STD_RETURN = "test/std_return"
"""Standard deviation of those returns."""
TEST_SCORE = "test/score"
"""mean - std on the held-out seeds: the figure a run, a sweep and the registry report."""

TD_LOSS = "loss/td"
"""The value learner's loss (mean squared TD error for Q-learning, Huber or MSE for DQN)."""
MC_LOSS = "loss/mc"
"""Monte Carlo control's mean squared error G - Q(s, a) of its updates."""
POLICY_LOSS = "loss/policy"
"""REINFORCE's loss, -(1/m) sum G_t log pi(a_t | s_t)."""

ENV_STEPS_PER_S = "perf/env_steps_per_s"
"""Env steps sampled per second of training since the last report."""
UPDATES_PER_S = "perf/updates_per_s"
"""Updates per second of training since the last report."""


def score(mean: float, std: float) -> float:
    """The course's figure of merit for an agent: mean - std of its evaluation returns."""
    return mean - std
