"""DQN and Double DQN: the TD target by hand, and learning CartPole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from algos import dqn
from algos.core.reporting import MemoryReporter
from algos.dqn import (
    DQNConfig,
    dqn_loss,
    make_optimizer,
    request_steps,
    td_targets,
    train,
    train_phase,
)
from pipelines.config.compose import compose_config
from tests.helpers import on_every_seed


def linear(weights: list[float]) -> nn.Module:
    """Q(s) = [w0 * s, w1 * s]: a fixed network over a 1-d state."""
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(weights).unsqueeze(1))
    return net


# online: Q(s') = [s', 2 s'];  target: Q_target(s') = [3 s', s']
ONLINE, TARGET = linear([1.0, 2.0]), linear([3.0, 1.0])
BATCH = {
    "obs": torch.tensor([[0.5], [1.0], [2.0]]),
    "actions": torch.tensor([0, 1, 1]),
    "rewards": torch.tensor([1.0, 0.5, 2.0]),
    "next_obs": torch.tensor([[1.0], [-1.0], [4.0]]),
    "terminated": torch.tensor([False, False, True]),
}


def test_dqn_target_is_the_target_networks_max():
    # s'=1: max(3, 1) = 3 -> 1 + 0.9 * 3 = 3.7; s'=-1: max(-3, -1) = -1 -> 0.5 - 0.9 = -0.4;
    # the third transition terminated: its target is its reward, 2.
    y = td_targets(ONLINE, TARGET, BATCH, gamma=0.9, double=False)
    assert y.tolist() == pytest.approx([3.7, -0.4, 2.0])


def test_double_dqn_target_evaluates_the_online_networks_choice():
    # s'=1: online picks action 1 (2 > 1), target values it 1 -> 1 + 0.9 * 1 = 1.9;
    # s'=-1: online picks action 0 (-1 > -2), target values it -3 -> 0.5 - 2.7 = -2.2.
    y = td_targets(ONLINE, TARGET, BATCH, gamma=0.9, double=True)
    assert y.tolist() == pytest.approx([1.9, -2.2, 2.0])


def test_the_loss_compares_the_target_with_q_of_the_action_taken():
    # Q(s, a): 0.5 * 1 (a=0), 2 * 1.0 (a=1), 2 * 2.0 (a=1) -> [0.5, 2.0, 4.0]
    loss, q = dqn_loss(ONLINE, TARGET, BATCH, gamma=0.9, double=False, loss="mse")
    assert q.tolist() == pytest.approx([0.5, 2.0, 4.0])
    expected = ((3.7 - 0.5) ** 2 + (-0.4 - 2.0) ** 2 + (2.0 - 4.0) ** 2) / 3
    assert float(loss) == pytest.approx(expected)


@pytest.mark.parametrize("double", [False, True])
def test_a_training_phase_is_the_same_as_one_step_at_a_time(double):
    # A phase draws its minibatches at once and, for DQN, computes their targets in one
    # pass (the target network is fixed within a phase): the same weights as the plain
    # loop of one dqn_loss and one Adam step per minibatch.
    from algos.core.networks import MLP

    cfg = DQNConfig(double=double, batch_size=8, max_grad_norm=0.5, gamma=0.9)
    gen = torch.Generator().manual_seed(0)
    phase = {"obs": torch.randn(24, 3, generator=gen),
             "actions": torch.randint(0, 2, (24,), generator=gen),
             "rewards": torch.randn(24, generator=gen),
             "next_obs": torch.randn(24, 3, generator=gen),
             "terminated": torch.rand(24, generator=gen) < 0.2}
    torch.manual_seed(0)
    online, target = MLP(3, 2, [16]), MLP(3, 2, [16])
    plain = MLP(3, 2, [16])
    plain.load_state_dict(online.state_dict())
    initial = online.body[0].weight.detach().clone()
    opt, plain_opt = (make_optimizer(n, 1e-2, torch.device("cpu")) for n in (online, plain))
    stats = train_phase(online, target, opt, phase, 3, cfg)
    for k in range(3):
        batch = {key: t[8 * k:8 * (k + 1)] for key, t in phase.items()}
        loss, _ = dqn_loss(plain, target, batch, 0.9, double)
        plain_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
        plain_opt.step()
        assert float(stats[k, 0]) == pytest.approx(float(loss))
    for a, b in zip(online.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(online.body[0].weight, initial)  # the steps changed the weights


def test_learning_in_phases_bounded_in_memory_takes_every_update(monkeypatch):
    # A phase larger than PHASE_BYTES of observations is split: 10 updates of batch 8 on
    # 3-float observations (12 bytes each, obs + next_obs 24) in pieces of 3 updates.
    import numpy as np

    from algos.core.networks import MLP
    from algos.core.replay import ReplayBuffer

    monkeypatch.setattr(dqn, "PHASE_BYTES", 3 * 8 * 24)
    buffer = ReplayBuffer(100, (3,), np.float32, seed=0)
    rng = np.random.default_rng(0)
    buffer.add(np.zeros(50, np.int64), rng.standard_normal((50, 3)).astype(np.float32),
               rng.integers(0, 2, 50), rng.random(50), rng.standard_normal((50, 3)),
               rng.random(50) < 0.1, np.zeros(50, bool))
    sizes = []
    original = dqn.train_phase
    monkeypatch.setattr(dqn, "train_phase",
                        lambda *a: sizes.append(a[4]) or original(*a))
    online, target = MLP(3, 2, [8]), MLP(3, 2, [8])
    cfg = DQNConfig(batch_size=8)
    stats = dqn.update(online, target, make_optimizer(online, 1e-3, torch.device("cpu")),
                      buffer, 10, cfg, torch.device("cpu"))
    assert sizes == [3, 3, 3, 1] and stats.shape == (10, 2)


def test_sample_requests_are_large_enough_to_pay_for_their_round_trip():
    def steps(**kw):
        return request_steps(DQNConfig(**kw))

    # In the learner: one training phase's worth, at least one step of every env.
    assert steps(train_freq=4, envs_per_worker=8) == 8
    assert steps(train_freq=256) == 256
    # Per worker: train_freq shared, but at least 32 steps of each env (Pong: 4 -> 128).
    assert steps(train_freq=4, num_rollout_workers=2, envs_per_worker=4) == 128
    assert steps(train_freq=256, num_rollout_workers=1) == 256
    # Set: as asked, and never under one step of each env.
    assert steps(train_freq=4, num_rollout_workers=2, envs_per_worker=4, rollout_steps=8) == 8
    assert steps(num_rollout_workers=1, envs_per_worker=8, rollout_steps=3) == 8


@pytest.mark.slow  # 7-8 min: ten runs of 80,000 steps, two at a time
def test_dqn_and_double_dqn_learn_cartpole_on_every_seed_and_keep_it_on_most():
    # Here and not in the default suite (whose DQN tests check the update by hand and run
    # short). Every seed 0-4 of each reaches 475 (the RL Zoo reports 500 +- 0), and the
    # final network of four of the five still plays 475 or more. Which seed dips at the
    # end depends on the CPU's float kernels: on one machine all ten runs ended at 490 or
    # more, on this one's kind cartpole_ddqn's seed 0 ended at 259.6 after 500, 500, 64.4.
    # With a constant learning rate cartpole_dqn's seeds 0-9 ended at 181.6, 500, 500,
    # 500, 500, 495.1, 500, 500, 500, 378.
    experiments = ("cartpole_dqn", "cartpole_ddqn")
    assert [compose_config([f"experiment={e}"]).cfg.algo.double for e in experiments] == [
        False, True]
    curves = on_every_seed(experiments, range(5), "eval/mean_return")
    for experiment in experiments:
        mine = {seed: c for (e, seed), c in curves.items() if e == experiment}
        assert all(max(c) >= 475 for c in mine.values()), (experiment, mine)
        assert sum(c[-1] >= 475 for c in mine.values()) >= 4, (experiment, mine)


@pytest.mark.slow  # 70 s; learning in the learner stays in the default suite. Acting on
# the learner (algo.acting=learner) gives the workers' own actions for the same weights:
# test_acting_on_the_learner_gives_the_actions_of_the_workers_own_networks.
def test_dqn_learns_cartpole_with_a_rollout_worker(ray_session):
    # Sampling on a Ray actor while the learner trains: an evaluation reaches 475 and the
    # final network keeps 450 or more. The worker acts with weights up to one sync old, on
    # its own clock, so a run is not bitwise reproducible (CI once ended seed 0 at 471.0).
    cfg = compose_config(["experiment=cartpole_dqn", "algo.num_rollout_workers=1"]).cfg
    reporter = MemoryReporter()
    train(cfg.algo, cfg.env, seed=0, reporter=reporter)
    evals = [r["eval/mean_return"] for r in reporter.reports]
    assert max(evals) >= 475 and evals[-1] >= 450, evals


def _count_greedy(monkeypatch) -> list[int]:
    """A spy on the learner's greedy action (the function its network answers the
    workers with under algo.acting=learner): it still runs, and each call's batch size is
    recorded."""
    calls: list[int] = []
    real = dqn.Learner.greedy

    def greedy(self, obs):
        calls.append(len(obs))
        return real(self, obs)

    monkeypatch.setattr(dqn.Learner, "greedy", greedy)
    return calls


def test_the_learning_rate_decays_linearly_to_lr_end():
    # A training phase trains at the rate of the env step it follows: from lr 1e-3 at step
    # 0 to lr_end 0 at total_steps 2,048, so 2.5e-4 after step 1,536, then 0 at the end.
    cfg = compose_config(["experiment=cartpole_dqn", "algo.total_steps=2048",
                          "algo.learning_starts=256", "algo.eval_every=1536",
                          "algo.eval_episodes=1", "algo.lr_end=0.0", "algo.device=cpu"]).cfg
    lrs = []

    class Rates:
        def report(self, step, metrics, history=None, state=None, final=False):
            lrs.append((step, state["optimizer"]["param_groups"][0]["lr"]))

    train(cfg.algo, cfg.env, seed=0, reporter=Rates())
    assert lrs == [(1536, pytest.approx(2.5e-4)), (2048, 0.0)]


def _acting_setup(num_workers: int):
    """A pool of CartPole workers (2 envs each) and a random Q-network's weights."""
    from algos.core.envs import EnvConfig
    from algos.core.networks import cpu_weights
    from algos.core.workers import WorkerPool

    cfg = DQNConfig(hidden_sizes=[16], num_rollout_workers=num_workers, envs_per_worker=2)
    factory = dqn.network_factory(cfg)
    env_cfg = EnvConfig(id="CartPole-v1")
    pool = WorkerPool(env_cfg, num_workers, 2, factory, seed=3)
    torch.manual_seed(0)
    net = factory(pool.obs_space, pool.action_space)
    return pool, net, cpu_weights(net)


def _greedy_of(net: nn.Module):
    calls = []

    @torch.inference_mode()
    def policy(obs):
        calls.append(len(obs))
        return net(torch.as_tensor(obs)).argmax(1).numpy()

    return policy, calls


def _same_batches(a: list[dict], b: list[dict]) -> None:
    key = lambda batch: int(batch["env_ids"].min())  # noqa: E731  (one batch per worker)
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        assert x.keys() == y.keys() and x["steps"] == y["steps"]
        for k in x:
            if k != "episodes":
                assert np.array_equal(x[k], y[k]), k
        assert [e[:3] for e in x["episodes"]] == [e[:3] for e in y["episodes"]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_acting_on_the_learner_gives_the_actions_of_the_workers_own_networks(
        num_workers, request):
    # The same weights and exploration draws: algo.acting=learner (one forward pass of
    # the learner's network for every worker a step) samples exactly what each worker's
    # own copy samples, in the learner's process and on Ray actors.
    if num_workers:
        request.getfixturevalue("ray_session")
    batches = {}
    for acting in ("cpu", "learner"):
        pool, net, weights = _acting_setup(num_workers)
        policy, calls = _greedy_of(net)
        try:
            if acting == "cpu":
                pool.set_weights(weights)
            # Each worker's first batch (acting on CPUs, a worker that answers first is
            # asked again at once, so its second batch may come before another's first).
            got: dict[int, dict] = {}
            while len(got) < max(1, num_workers):
                batch = pool.sample(300, 0.3, policy=policy if acting == "learner" else None)
                got.setdefault(int(batch["env_ids"].min()), batch)
        finally:
            pool.close()
        batches[acting] = list(got.values())
        assert bool(calls) == (acting == "learner")
        if acting == "learner" and num_workers:
            # One call answers both workers: 2 envs each, less the rows exploring.
            assert max(calls) > 2
    _same_batches(batches["cpu"], batches["learner"])
    assert all(len(b["actions"]) >= 300 for b in batches["learner"])


def test_a_worker_that_never_acts_greedily_never_asks_the_learner():
    pool, net, _ = _acting_setup(0)
    policy, calls = _greedy_of(net)
    try:
        batch = pool.sample(64, 1.0, policy=policy)  # epsilon 1: every action random
    finally:
        pool.close()
    assert calls == [] and batch["steps"] == 64


def test_a_dqn_run_acting_on_the_learner_trains_as_one_acting_in_the_worker(monkeypatch):
    # In the learner's process both modes act with the newest weights: the same run. Only
    # acting=learner asks the learner's network for the sampler's greedy actions.
    calls = _count_greedy(monkeypatch)
    runs, asked = {}, {}
    for acting in ("cpu", "learner"):
        cfg = compose_config(["experiment=cartpole_dqn", "algo.total_steps=3000",
                              "algo.learning_starts=500", "algo.eval_every=3000",
                              "algo.eval_episodes=2", "algo.device=cpu",
                              f"algo.acting={acting}"]).cfg
        reporter = MemoryReporter()
        calls.clear()
        result = train(cfg.algo, cfg.env, seed=0, reporter=reporter)
        asked[acting] = list(calls)
        runs[acting] = ([p[:2] for p in reporter.history["train/episode_return"]], result)
    assert asked["cpu"] == [], "acting=cpu asked the learner for actions"
    # Acting on the learner: asked for the greedy rows (at most one per env a step) all
    # through the run; epsilon is 0.01 after its first 300 of 3,000 steps.
    assert len(asked["learner"]) > 1000 and max(asked["learner"]) <= cfg.algo.envs_per_worker
    assert runs["cpu"][0] == runs["learner"][0] and len(runs["cpu"][0]) > 20
    for (name, a), b in zip(runs["cpu"][1].network.state_dict().items(),
                            runs["learner"][1].network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
