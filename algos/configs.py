"""The hyperparameters of every algorithm, as typed configs: Hydra's schema of the algo
group (pipelines/config/schema.py) and what each algorithm's train() takes.

They live apart from the algorithms so that a config composes and validates without
importing a learner's libraries: a Q-learning run, its sweep's driver and its Ray
workers never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from algos.core.evaluation import SeedRange
from algos.core.validation import ConfigValueError, at_least, in_range, one_of, positive


@dataclass
class QLearningConfig:
    """Hyperparameters of tabular Q-learning (defaults: the course's FrozenLake)."""

    name: str = "q_learning"
    """The implementation, as registered in algos.registry."""
    episodes: int = 10_000
    """Training episodes."""
    lr: float = 0.7
    """Learning rate of the TD update."""
    gamma: float = 0.95
    """Discount factor."""
    max_steps: int = 99
    """Most steps in one episode, in training and in evaluation."""
    epsilon_start: float = 1.0
    """Exploration rate at episode 0."""
    epsilon_end: float = 0.05
    """Exploration rate the decay tends to."""
    epsilon_decay: float = 0.0005
    """Exponential decay rate of epsilon, per episode."""
    eval_episodes: int = 100
    """Greedy evaluation episodes."""
    eval_seeds: list[int] | None = None
    """One reset seed per evaluation episode; null means 0, 1, ..., eval_episodes - 1."""
    report_every: int = 1_000
    """Episodes between reports (metrics, evaluation and a checkpoint)."""

    def __post_init__(self) -> None:
        at_least(self, "episodes", 1)
        self.check_lr()
        positive(self, "max_steps", "eval_episodes", "report_every")
        in_range(self, "gamma", 0.0, 1.0, low_open=True)
        for key in ("epsilon_start", "epsilon_end"):
            in_range(self, key, 0.0, 1.0)
        at_least(self, "epsilon_decay", 0.0)
        if self.eval_seeds is not None and len(self.eval_seeds) != self.eval_episodes:
            raise ConfigValueError(
                "eval_seeds",
                f"<{len(self.eval_seeds)} seeds>",
                f"must hold eval_episodes={self.eval_episodes} seeds, one per episode",
            )

    def evaluation_seeds(self) -> list[int]:
        """The reset seed of each evaluation episode."""
        return list(self.eval_seeds) if self.eval_seeds is not None else list(
            range(self.eval_episodes)
        )

    def check_lr(self) -> None:
        """lr > 0."""
        positive(self, "lr")


@dataclass
class MonteCarloConfig(QLearningConfig):
    """Hyperparameters of tabular Monte Carlo control (course unit 2): Q-learning's acting,
    evaluation and budget, the update at the end of each episode."""

    name: str = "monte_carlo"
    """The implementation, as registered in algos.registry."""
    lr: float | None = 0.1  # type: ignore[assignment]  # (Q-learning's is never null)
    """Step size of the update Q(s, a) <- Q(s, a) + lr (G - Q(s, a)), in (0, 1] (the
    course's worked example uses 0.1); null: the sample average, 1 / N(s, a)."""
    first_visit: bool = False
    """Update a pair once per episode, at its first visit; false: at every visit."""
    bootstrap_truncated: bool = True
    """An episode cut by a time limit (the env's or max_steps), not ended by the env, gets
    gamma^k max_a Q(s_cut, a) added to each return, for the rewards it never received (as
    Q-learning bootstraps there; Pardo et al. 2018); false: its returns stop at the cut."""

    def check_lr(self) -> None:
        """lr in (0, 1], or null."""
        if self.lr is not None:
            in_range(self, "lr", 0.0, 1.0, low_open=True)


@dataclass
class DQNConfig(SeedRange):
    """Hyperparameters of DQN (defaults: the course's unit 3 Atari settings)."""

    name: str = "dqn"
    """The implementation, as registered in algos.registry."""
    double: bool = False
    """Double DQN: the online network selects the next action, the target evaluates it."""
    total_steps: int = 1_000_000
    """Env steps (agent steps) to train for."""
    buffer_size: int = 100_000
    """Replay memory capacity, in transitions."""
    lr: float = 1e-4
    """Adam's learning rate (at the start, with lr_end)."""
    lr_end: float | None = None
    """Learning rate at total_steps, reached linearly from lr (null: lr throughout)."""
    gamma: float = 0.99
    """Discount factor."""
    batch_size: int = 32
    """Transitions per gradient step."""
    learning_starts: int = 100_000
    """Env steps sampled before learning starts."""
    train_freq: int = 4
    """Env steps between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase."""
    target_update_interval: int = 1_000
    """Env steps between copies of the online network into the target network."""
    exploration_fraction: float = 0.1
    """Fraction of total_steps over which epsilon decays linearly."""
    epsilon_start: float = 1.0
    """Exploration rate at the start."""
    epsilon_end: float = 0.01
    """Exploration rate after the decay."""
    loss: str = "huber"
    """huber or mse."""
    max_grad_norm: float | None = 10.0
    """Clip the gradient norm to this (null: no clip)."""
    clip_rewards: bool = False
    """Learn from sign(reward) (the Atari papers' clipping); returns stay unclipped."""
    network: str = "auto"
    """auto (cnn for frame stacks, else mlp), mlp or cnn."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """The MLP's hidden layers."""
    frame_memory: bool = True
    """Store Atari frames once in the replay memory (7 GB per 1M transitions, not 28-56)."""
    num_rollout_workers: int = 0
    """Ray actors sampling beside the learner (0: sample in the learner process)."""
    envs_per_worker: int = 1
    """Vector envs per rollout worker (or in the learner with 0 workers)."""
    rollout_steps: int = 0
    """Env steps per sample request to a rollout worker. 0: train_freq shared among the
    workers, and at least 32 steps of each of the worker's envs (a request is a Ray round
    trip: 4 steps per request sample at a third of the rate of 128). The learner takes
    gradient_steps per train_freq env steps of whatever arrives."""
    acting: str = "cpu"
    """Who picks the greedy actions while sampling: cpu (each rollout worker's copy of the
    network, on its CPU core) or learner (the learner's network on its device, one
    batched forward pass for every worker a step, SEED RL's way; no weights are sent)."""
    device: str = "auto"
    """Learner device: auto (CUDA when there is one), cpu, cuda, cuda:N."""
    replay_device: str = "learner"
    """Where the frame memory keeps its frames: learner (the learner's device: on a GPU,
    minibatches are gathered there and only indices cross the bus; 7 GB of GPU memory per
    1M Atari transitions), or cpu (host memory)."""
    cuda_graph: bool = True
    """On CUDA, replay each gradient step as one captured CUDA graph (one launch instead
    of dozens: a small network's update is paced by kernel launches, not by the GPU)."""
    eval_episodes: int = 10
    """Greedy evaluation episodes."""
    eval_every: int = 10_000
    """Env steps between evaluations (and reports)."""
    eval_seed: int = 1_000_000
    """Reset seed of the first evaluation episode (then +1 per episode)."""
    eval_epsilon: float = 0.0
    """Exploration during evaluation (Atari papers use 0.05)."""
    checkpoint_replay: bool = False
    """Include the replay memory in checkpoints (large for Atari); without it a resumed
    run refills the memory for learning_starts steps before it learns again."""
    max_worker_restarts: int = 5
    """Rollout workers that may die in a run and be replaced in place; one more fails it."""

    def __post_init__(self) -> None:
        positive(self, "total_steps", "buffer_size", "lr", "batch_size", "train_freq",
                   "gradient_steps", "target_update_interval", "envs_per_worker",
                   "eval_episodes", "eval_every")
        in_range(self, "gamma", 0.0, 1.0, low_open=True)
        at_least(self, "learning_starts", 0)
        at_least(self, "num_rollout_workers", 0)
        at_least(self, "rollout_steps", 0)
        at_least(self, "max_worker_restarts", 0)
        for key in ("exploration_fraction", "epsilon_start", "epsilon_end", "eval_epsilon"):
            in_range(self, key, 0.0, 1.0)
        one_of(self, "loss", ("huber", "mse"))
        one_of(self, "network", ("auto", "mlp", "cnn"))
        if self.max_grad_norm is not None:
            positive(self, "max_grad_norm")
        if self.lr_end is not None:
            at_least(self, "lr_end", 0.0)
        if self.batch_size > self.buffer_size:
            raise ConfigValueError("batch_size", self.batch_size, "must be <= buffer_size")
        if not self.device == "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigValueError("device", self.device, "must be auto, cpu, cuda or cuda:N")
        one_of(self, "replay_device", ("cpu", "learner"))
        one_of(self, "acting", ("cpu", "learner"))


@dataclass
class ReinforceConfig(SeedRange):
    """Hyperparameters of REINFORCE (defaults: the course's unit 4 CartPole settings)."""

    name: str = "reinforce"
    """The implementation, as registered in algos.registry."""
    episodes: int = 1_000
    """Training episodes."""
    episodes_per_update: int = 1
    """m: episodes averaged in one gradient estimate."""
    lr: float = 1e-2
    """Adam's learning rate (at the start, with lr_end)."""
    lr_end: float | None = None
    """Learning rate at the last episode, reached linearly from lr (null: lr throughout)."""
    gamma: float = 1.0
    """Discount factor."""
    max_steps: int = 1_000
    """Most steps in one episode (the env's own time limit applies too)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [16])
    """The policy MLP's hidden layers (the course: one of 16)."""
    network: str = "auto"
    """auto (cnn for frame stacks, else mlp), mlp or cnn."""
    standardize_returns: bool = True
    """Standardize G_t within each episode (the course does)."""
    baseline: bool = False
    """Subtract the batch's mean G_t (before standardizing)."""
    num_rollout_workers: int = 0
    """Ray actors sampling episodes (0: sample in the learner process)."""
    envs_per_worker: int = 1
    """Vector envs per rollout worker (or in the learner with 0 workers)."""
    device: str = "cpu"
    """Learner device: cpu, cuda, cuda:N or auto (small policies are fastest on the CPU)."""
    eval_episodes: int = 10
    """Evaluation episodes."""
    eval_every: int = 100
    """Training episodes between evaluations (and reports)."""
    eval_seed: int = 1_000_000
    """Reset seed of the first evaluation episode (then +1 per episode)."""
    eval_greedy: bool = False
    """Evaluate the most probable action; false samples from the policy, as the course."""
    max_worker_restarts: int = 5
    """Rollout workers that may die in a run and be replaced in place; one more fails it."""

    def __post_init__(self) -> None:
        positive(self, "episodes", "episodes_per_update", "lr", "max_steps",
                   "envs_per_worker", "eval_episodes", "eval_every")
        in_range(self, "gamma", 0.0, 1.0, low_open=True)
        at_least(self, "num_rollout_workers", 0)
        at_least(self, "max_worker_restarts", 0)
        if self.lr_end is not None:
            at_least(self, "lr_end", 0.0)
        one_of(self, "network", ("auto", "mlp", "cnn"))
        if not self.device == "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigValueError("device", self.device, "must be auto, cpu, cuda or cuda:N")
