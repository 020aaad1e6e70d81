"""DQN and Double DQN, course unit 3.

Acting is epsilon-greedy with epsilon decaying linearly from `epsilon_start` to
`epsilon_end` over `exploration_fraction` of training. Transitions go into a uniform
replay memory; random minibatches train the online network on

    target = r + gamma * Q_target(s', argmax_a' Q(s', a'))   (double: true)
    target = r + gamma * max_a' Q_target(s', a')             (double: false)
    target = r                                               (s' terminal)

with a Huber or squared loss on target - Q(s, a), Adam (its learning rate constant, or
decaying linearly to `lr_end` at the end of training) and an optional gradient-norm
clip; the target network is copied from the online one every `target_update_interval`
env steps. A truncated episode still bootstraps from its true final observation.

Sampling runs on rollout workers (Ray actors, `num_rollout_workers` > 0) while the learner
trains: each worker always has one sample request in flight, the learner takes whichever
batch is ready first (`ray.wait`), and new weights go out with one `ray.put` per sync.
With 0 workers the learner samples in its own process, in turn with learning.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from algos.configs import DQNConfig
from algos.core import metrics as m
from algos.core.agents import NetworkAgent, NetworkResult
from algos.core.cuda_graph import GraphedStep
from algos.core.envs import EnvConfig
from algos.core.evaluation import play_episodes
from algos.core.finite import check_finite
from algos.core.networks import (
    NetworkFactory,
    check_box_discrete,
    cpu_weights,
    is_image,
    resolve_device,
    set_lr,
)
from algos.core.replay import Batch, FrameReplayBuffer, ReplayBuffer
from algos.core.reporting import Reporter, Reports
from algos.core.schedules import linear
from algos.core.workers import WorkerPool


def check_spaces(env) -> None:
    """DQN needs discrete actions and Box observations."""
    check_box_discrete(env, "DQN")


def td_targets(
    online: nn.Module, target: nn.Module, batch: Mapping[str, torch.Tensor], gamma: float,
    double: bool,
) -> torch.Tensor:
    """The Bellman targets of a batch: r, plus gamma times the next value where the
    episode did not terminate. One branch differs between DQN and Double DQN."""
    with torch.no_grad():
        next_q = target(batch["next_obs"])
        if double:
            next_actions = online(batch["next_obs"]).argmax(1, keepdim=True)
            next_value = next_q.gather(1, next_actions).squeeze(1)
        else:
            next_value = next_q.max(1).values
        not_done = 1.0 - batch["terminated"].float()
        return batch["rewards"] + gamma * not_done * next_value


def dqn_loss(
    online: nn.Module, target: nn.Module, batch: Mapping[str, torch.Tensor], gamma: float,
    double: bool, loss: str = "huber", targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, Q(s, a)) of a batch; `targets` when they were computed beforehand."""
    q = online(batch["obs"]).gather(1, batch["actions"].long().unsqueeze(1)).squeeze(1)
    y = td_targets(online, target, batch, gamma, double) if targets is None else targets
    error = F.smooth_l1_loss(q, y) if loss == "huber" else F.mse_loss(q, y)
    return error, q


def sgd_step(
    online: nn.Module, target: nn.Module, optimizer: torch.optim.Optimizer, cfg: DQNConfig,
    obs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None, next_obs: torch.Tensor | None = None,
    terminated: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient step on a minibatch (with its targets, or the rest of the transition to
    compute them from): the (loss, mean Q(s, a)) it took, as a tensor (no device sync)."""
    given = {"obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs,
             "terminated": terminated}
    batch = {k: t for k, t in given.items() if t is not None}
    loss, q = dqn_loss(online, target, batch, cfg.gamma, cfg.double, cfg.loss, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.max_grad_norm is not None:
        nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm, foreach=True)
    optimizer.step()
    return torch.stack((loss.detach(), q.detach().mean()))


def step_inputs(batch: Mapping[str, torch.Tensor], targets: torch.Tensor | None,
                double: bool) -> dict[str, Any]:
    """sgd_step's inputs: DQN's precomputed targets, or what Double DQN computes them from."""
    if not double:
        return {"obs": batch["obs"], "actions": batch["actions"], "targets": targets}
    return {k: batch[k] for k in ("obs", "actions", "rewards", "next_obs", "terminated")}


def capture_step(online: nn.Module, target: nn.Module, optimizer: torch.optim.Optimizer,
                 cfg: DQNConfig, obs_space, device: torch.device) -> GraphedStep:
    """sgd_step captured as a CUDA graph for minibatches of obs_space observations."""
    b = cfg.batch_size
    obs = torch.zeros((b, *obs_space.shape), device=device,
                      dtype=torch.from_numpy(np.zeros(0, obs_space.dtype)).dtype)
    example = {"obs": obs, "actions": torch.zeros(b, dtype=torch.int64, device=device),
               "rewards": torch.zeros(b, device=device), "next_obs": obs.clone(),
               "terminated": torch.zeros(b, dtype=torch.bool, device=device)}
    example = step_inputs(example, torch.zeros(b, device=device), cfg.double)
    return GraphedStep(lambda **inputs: sgd_step(online, target, optimizer, cfg, **inputs),
                       example, [online], optimizer)


def train_phase(
    online: nn.Module, target: nn.Module, optimizer: torch.optim.Optimizer,
    phase: Mapping[str, torch.Tensor], n_updates: int, cfg: DQNConfig,
    graphed: GraphedStep | None = None,
) -> torch.Tensor:
    """`n_updates` gradient steps, step k on rows [k * batch_size, (k + 1) * batch_size) of
    `phase`: a (n_updates, 2) tensor of each step's loss and mean Q(s, a) (no device sync).
    With `graphed` (capture_step), each step is one CUDA graph replay.

    The target network does not change within a phase, so DQN's targets come from one
    forward pass over the whole phase, the same values as step by step. Double DQN's
    depend on the online network, which every step changes: they are computed per step."""
    b = cfg.batch_size
    targets = None if cfg.double else td_targets(online, target, phase, cfg.gamma, False)
    out = []
    for k in range(n_updates):
        rows = slice(k * b, (k + 1) * b)
        batch = {key: t[rows] for key, t in phase.items()}
        inputs = step_inputs(batch, None if targets is None else targets[rows], cfg.double)
        if graphed is None:
            out.append(sgd_step(online, target, optimizer, cfg, **inputs))
        else:
            out.append(graphed(**inputs).clone())
    return torch.stack(out)


def update(
    online: nn.Module, target: nn.Module, optimizer: torch.optim.Optimizer, memory,
    n_updates: int, cfg: DQNConfig, device: torch.device, graphed: GraphedStep | None = None,
) -> torch.Tensor:
    """`n_updates` gradient steps on minibatches from the replay memory, drawn a phase at
    a time (the memory does not change within a phase, so this is the same distribution
    as one draw per step), phases of at most PHASE_BYTES of observations: the (n_updates,
    2) losses and mean Qs of train_phase."""
    obs_bytes = 2 * memory.obs_nbytes
    most = max(1, PHASE_BYTES // (cfg.batch_size * obs_bytes))
    out = []
    for first in range(0, n_updates, most):
        n = min(most, n_updates - first)
        phase = to_tensors(memory.sample(cfg.batch_size * n), device, cfg.clip_rewards)
        out.append(train_phase(online, target, optimizer, phase, n, cfg, graphed))
    return torch.cat(out)


def uses_cuda_graph(cfg: DQNConfig, device: torch.device) -> bool:
    """Whether the learner replays its steps as CUDA graphs (not with lr_end: a captured
    step keeps the learning rate it was captured with)."""
    return cfg.cuda_graph and device.type == "cuda" and cfg.lr_end is None


def make_optimizer(net: nn.Module, lr: float, device: torch.device,
                   capturable: bool = False) -> torch.optim.Adam:
    """Adam with its fused kernel where PyTorch has one (CPU and CUDA): one kernel per
    step for all parameters (foreach elsewhere); capturable for a CUDA graph."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.Adam(net.parameters(), lr=lr, fused=True, capturable=capturable)
    return torch.optim.Adam(net.parameters(), lr=lr, foreach=True)


PHASE_BYTES = 1 << 26
"""The most observation bytes one phase's minibatches take at once (64 MiB)."""


def request_steps(cfg: DQNConfig) -> int:
    """Env steps per sample request: train_freq (at least one step of every env) sampled
    in the learner; per rollout worker, algo.rollout_steps, or by default train_freq shared
    among the workers and at least 32 steps of each of the worker's envs."""
    if not cfg.num_rollout_workers:
        return max(cfg.train_freq, cfg.envs_per_worker)
    if cfg.rollout_steps:
        return max(cfg.rollout_steps, cfg.envs_per_worker)
    return max(cfg.train_freq // cfg.num_rollout_workers, 32 * cfg.envs_per_worker)


def network_factory(cfg: DQNConfig) -> NetworkFactory:
    """A picklable (obs space, action space) -> Q-network, for the learner and workers."""
    return NetworkFactory(cfg.network, tuple(cfg.hidden_sizes))


def to_tensors(batch: Batch, device: torch.device, clip: bool) -> dict[str, torch.Tensor]:
    """A minibatch as tensors on the device (rewards clipped to their sign with clip)."""
    rewards = np.sign(batch.rewards) if clip else batch.rewards
    return {
        "obs": torch.as_tensor(batch.obs, device=device),
        "actions": torch.as_tensor(batch.actions, device=device),
        "rewards": torch.as_tensor(rewards, device=device, dtype=torch.float32),
        "next_obs": torch.as_tensor(batch.next_obs, device=device),
        "terminated": torch.as_tensor(batch.terminated, device=device),
    }


def check_stats(step: int, stats: torch.Tensor) -> None:
    """Stop at once (NonFiniteError) when a step's loss or mean Q is NaN or infinite: the
    (n, 2) stats of update(). One device sync, which the weights' copy right after needs
    anyway."""
    finite = torch.isfinite(stats).all(1)
    if not bool(finite.all()):
        loss, q = stats[~finite][0].tolist()
        check_finite(step, {m.TD_LOSS: loss, m.Q_MEAN: q})


@torch.no_grad()
def evaluate(
    net: nn.Module, env_cfg: EnvConfig, seeds: Sequence[int], cfg: DQNConfig
) -> tuple[float, float, list[float]]:
    """Greedy play (epsilon-greedy with cfg.eval_epsilon), one episode per reset seed, on
    the network's device: (mean, std, returns)."""
    device = next(net.parameters()).device
    rng = np.random.default_rng(seeds[0])

    def act(obs: np.ndarray) -> np.ndarray:
        q = net(torch.as_tensor(obs, device=device))
        actions = q.argmax(1).cpu().numpy()
        if cfg.eval_epsilon > 0:
            explore = rng.random(len(obs)) < cfg.eval_epsilon
            actions = np.where(explore, rng.integers(0, q.shape[1], len(obs)), actions)
        return actions

    was_training = net.training
    net.eval()
    try:
        return play_episodes(env_cfg, seeds, act)
    finally:
        net.train(was_training)


def replay_envs(cfg: DQNConfig) -> int:
    """The env streams that feed the replay memory: every env of every worker."""
    return max(1, cfg.num_rollout_workers) * cfg.envs_per_worker


def replay_nbytes(cfg: DQNConfig, obs_space) -> tuple[int, int]:
    """(host bytes, learner-device bytes) of the replay memory train() allocates: with
    replay_device=learner the frames go to the learner's device (host memory too, for a
    CPU learner), the rest stays in host memory."""
    n_envs = replay_envs(cfg)
    if cfg.frame_memory and is_image(obs_space):
        frames, bookkeeping = FrameReplayBuffer.planned_nbytes(
            cfg.buffer_size, obs_space.shape[1:], obs_space.shape[0], n_envs, obs_space.dtype)
        if cfg.replay_device == "learner":
            return bookkeeping, frames
        return frames + bookkeeping, 0
    return ReplayBuffer.planned_nbytes(cfg.buffer_size, obs_space.shape, obs_space.dtype,
                                       n_envs), 0


def make_buffer(cfg: DQNConfig, obs_space, n_envs: int, seed: int,
                device: torch.device | None = None):
    """The replay memory suited to the observations (frames on `device` with
    replay_device=learner)."""
    if cfg.frame_memory and is_image(obs_space):
        where = device if cfg.replay_device == "learner" else None
        return FrameReplayBuffer(cfg.buffer_size, obs_space.shape[1:],
                                 stack=obs_space.shape[0], n_envs=n_envs, seed=seed,
                                 device=where)
    return ReplayBuffer(cfg.buffer_size, obs_space.shape, obs_space.dtype, n_envs=n_envs,
                        seed=seed)


class Learner:
    """The learning side of a DQN run: the online and target networks, Adam, the replay
    memory, and the counters a checkpoint carries."""

    def __init__(self, cfg: DQNConfig, obs_space, action_space, factory: NetworkFactory,
                 seed: int, state: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.obs_space = obs_space
        self.online = factory(obs_space, action_space).to(self.device)
        self.target = copy.deepcopy(self.online)
        self.graphs = uses_cuda_graph(cfg, self.device)
        self.graphed: GraphedStep | None = None  # captured at the first update
        self.optimizer = make_optimizer(self.online, cfg.lr, self.device,
                                        capturable=self.graphs)
        self.memory = make_buffer(cfg, obs_space, replay_envs(cfg), seed, self.device)
        self.env_steps = self.updates = self.last_sync = 0
        self.learn_from = cfg.learning_starts
        """The env step from which the learner updates."""
        self.learning = False
        self.owed = 0.0
        """Updates owed to the env steps sampled so far (gradient_steps per train_freq)."""
        self.stats = torch.zeros(2, device=self.device)
        """Loss and mean Q summed over the updates since the last report."""
        self.stats_count = 0
        if state is not None:
            self.load_state_dict(state)

    def epsilon(self) -> float:
        """The exploration rate at this env step: linear over exploration_fraction."""
        cfg = self.cfg
        return linear(self.env_steps, cfg.epsilon_start, cfg.epsilon_end,
                      int(cfg.exploration_fraction * cfg.total_steps))

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """The online network's greedy actions for a batch of observations, on the
        learner's device (the rollout workers' policy with algo.acting=learner)."""
        return self.online(torch.as_tensor(obs, device=self.device)).argmax(1).cpu().numpy()

    def lr(self) -> float:
        """The learning rate at this env step: lr, or linear from lr to lr_end."""
        cfg = self.cfg
        if cfg.lr_end is None:
            return cfg.lr
        return linear(self.env_steps, cfg.lr, cfg.lr_end, cfg.total_steps)

    def store(self, batch: Mapping[str, Any]) -> None:
        """A batch of transitions from the rollout workers into the replay memory."""
        self.memory.add(batch["env_ids"], batch["obs"], batch["actions"], batch["rewards"],
                        batch["next_obs"], batch["terminated"], batch["truncated"],
                        batch["episode_starts"], batch.get("first_frames"))
        self.env_steps += batch["steps"]

    def take_updates(self, new_steps: int) -> int:
        """The gradient steps `new_steps` more env steps pay for, once learning has
        started, then the target network's copy when one is due: the updates taken."""
        cfg = self.cfg
        # Once learning starts it goes on (len() of the frame memory is not free).
        self.learning = self.learning or (self.env_steps >= self.learn_from
                                          and len(self.memory) >= cfg.batch_size)
        if not self.learning:
            return 0
        self.owed += new_steps * cfg.gradient_steps / cfg.train_freq
        n_updates = int(self.owed)
        self.owed -= n_updates
        if n_updates:
            if self.graphs and self.graphed is None:
                self.graphed = capture_step(self.online, self.target, self.optimizer, cfg,
                                            self.obs_space, self.device)
            if cfg.lr_end is not None:
                set_lr(self.optimizer, self.lr())
            stats = update(self.online, self.target, self.optimizer, self.memory, n_updates,
                           cfg, self.device, self.graphed)
            check_stats(self.env_steps, stats)
            self.stats += stats.sum(0)
            self.stats_count += n_updates
            self.updates += n_updates
        if self.env_steps - self.last_sync >= cfg.target_update_interval:
            self.target.load_state_dict(self.online.state_dict())
            self.last_sync = self.env_steps
        return n_updates

    def metrics(self) -> dict[str, float]:
        """The learner's metrics since the last call: the mean loss and Q of its updates
        (when it took any), and the updates so far."""
        out = {m.UPDATES: float(self.updates)}
        if self.stats_count:
            out[m.TD_LOSS], out[m.Q_MEAN] = (self.stats / self.stats_count).tolist()
        self.stats, self.stats_count = torch.zeros(2, device=self.device), 0
        return out

    def state_dict(self) -> dict[str, Any]:
        """The networks, the optimizer, the counters, and the replay memory with
        checkpoint_replay."""
        return {
            "online": cpu_weights(self.online), "target": cpu_weights(self.target),
            "optimizer": self.optimizer.state_dict(),
            "env_steps": self.env_steps, "updates": self.updates, "last_sync": self.last_sync,
            "replay": self.memory.state_dict() if self.cfg.checkpoint_replay else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from state_dict(); without a saved memory, refill it for
        learning_starts env steps before updating again."""
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.env_steps, self.updates = state["env_steps"], state["updates"]
        # Adam's state carries the learning rate it was saved with: the config's wins
        # (after Population Based Training's explore step it is a new one; ray#62173).
        set_lr(self.optimizer, self.lr())
        self.last_sync = state["last_sync"]
        if state.get("replay") is not None:
            self.memory.load_state_dict(state["replay"])
        else:
            self.learn_from = self.env_steps + self.cfg.learning_starts


def train(cfg: DQNConfig, env_cfg: EnvConfig, seed: int, reporter: Reporter | None = None,
          state: Mapping[str, Any] | None = None) -> NetworkResult:
    """Train a Q-network; continue from a checkpoint `state` when one is given."""
    torch.manual_seed(seed)
    factory = network_factory(cfg)
    pool = WorkerPool.for_run(env_cfg, cfg, factory, seed, state, "env_steps")
    learner = Learner(cfg, pool.obs_space, pool.action_space, factory, seed, state)
    eval_seeds = cfg.evaluation_seeds()
    reports = Reports(reporter, cfg.eval_every, cfg.total_steps,
                      evaluate=lambda: evaluate(learner.online, env_cfg, eval_seeds, cfg),
                      weights=lambda: cpu_weights(learner.online),
                      position=learner.env_steps, state=state,
                      agent=lambda: NetworkAgent.of(learner.online, factory, pool.obs_space,
                                                    int(pool.action_space.n)))
    # Stacked frames travel as their newest frame (FrameReplayBuffer's format).
    frames_only = cfg.frame_memory and is_image(pool.obs_space)
    # algo.acting=learner: the online network acts for the workers; no weights travel.
    policy = learner.greedy if cfg.acting == "learner" else None
    if policy is None:
        pool.set_weights(cpu_weights(learner.online))
    try:
        while learner.env_steps < cfg.total_steps:
            epsilon = learner.epsilon()
            batch = pool.sample(request_steps(cfg), epsilon, frames_only, policy)
            for episode_return, _, at, ended_at in batch["episodes"]:
                reports.episode(learner.env_steps + at, episode_return, ended_at)
            learner.store(batch)
            updates = learner.take_updates(batch["steps"])
            if updates and policy is None:
                pool.set_weights(cpu_weights(learner.online))
            reports.count(learner.env_steps, learner.env_steps, batch["steps"], updates)
            if reports.due(learner.env_steps):
                reports.report(learner.env_steps, learner.env_steps, {
                    **learner.metrics(), m.EPSILON: epsilon,
                    m.WORKER_RESTARTS: float(pool.restarts),
                }, {**learner.state_dict(), "worker_restarts": pool.restarts})
    finally:
        pool.close()
    return NetworkResult.of(learner.online, factory, pool.obs_space,
                            int(pool.action_space.n), reports.metrics, reports.best)
