"""Agents saved as data and loaded back: the same actions, and a changed file refused."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from algos.core.agents import (
    AgentFileError,
    NetworkAgent,
    TableAgent,
    read_manifest,
    save_agent,
)
from algos.core.networks import NetworkFactory


def test_a_q_table_agent_round_trips_as_npy(tmp_path):
    table = np.random.default_rng(0).normal(size=(16, 4))
    agent = TableAgent(table)
    manifest = save_agent(agent, tmp_path / "a", algo="q_learning", step=7)
    assert set(manifest["files"]) == {"q_table.npy"} and manifest["step"] == 7
    loaded = TableAgent.load(tmp_path / "a", read_manifest(tmp_path / "a")["spec"])
    states = np.arange(16)
    assert np.array_equal(loaded.act(states), table.argmax(1))


@pytest.mark.parametrize("obs_space", [
    gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
    gym.spaces.Box(0, 255, (4, 84, 84), np.uint8),
], ids=["mlp", "cnn"])
def test_a_network_agent_round_trips_as_tensors_only(tmp_path, obs_space):
    torch.manual_seed(0)
    factory = NetworkFactory("auto", (32, 32))
    net = factory(obs_space, gym.spaces.Discrete(3))
    agent = NetworkAgent.of(net, factory, obs_space, 3)
    save_agent(agent, tmp_path / "n", algo="dqn")
    spec = read_manifest(tmp_path / "n")["spec"]
    loaded = NetworkAgent.load(tmp_path / "n", spec)
    obs = np.stack([obs_space.sample() for _ in range(8)])
    assert np.array_equal(loaded.act(obs), agent.act(obs))
    with torch.no_grad():
        expected = net(torch.as_tensor(obs)).argmax(1).numpy()
    assert np.array_equal(loaded.act(obs), expected)


def saved_mlp(folder):
    """A small CartPole-shaped network agent, saved in `folder`."""
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    factory = NetworkFactory("mlp", (8,))
    agent = NetworkAgent.of(factory(obs_space, gym.spaces.Discrete(2)), factory, obs_space, 2)
    save_agent(agent, folder, algo="dqn")
    return agent


@pytest.mark.parametrize("file,reader", [
    ("weights.pt", read_manifest),  # what the project's loader checks first
    ("model.onnx", "portable"),  # the loader a model carries, before onnxruntime reads it
])
def test_a_changed_file_is_refused_before_it_is_read(tmp_path, file, reader):
    from algos.core.rlpipe_agent import PortableAgent

    reader = PortableAgent if reader == "portable" else reader
    saved_mlp(tmp_path / "n")
    path = tmp_path / "n" / file
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AgentFileError, match=f"{file}: its SHA-256 is not the one recorded"):
        reader(tmp_path / "n")
    (tmp_path / "n" / "agent.json").write_text("{not json")
    with pytest.raises(AgentFileError, match="not an agent's manifest"):
        reader(tmp_path / "n")


def test_weights_of_another_network_are_refused_with_a_clear_error(tmp_path):
    saved_mlp(tmp_path / "n")
    spec = {**read_manifest(tmp_path / "n")["spec"], "hidden_sizes": [16]}
    with pytest.raises(AgentFileError, match="not this network's weights"):
        NetworkAgent.load(tmp_path / "n", spec)


def test_same_as_compares_weights_not_identity():
    table = np.arange(8.0).reshape(4, 2)
    assert TableAgent(table).same_as(TableAgent(table.copy()))
    assert not TableAgent(table).same_as(TableAgent(table + 1))
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    factory = NetworkFactory("mlp", (8,))
    agent = NetworkAgent.of(factory(obs_space, gym.spaces.Discrete(2)), factory, obs_space, 2)
    assert agent.same_as(agent.with_weights(agent.net.state_dict()))
    changed = {k: v + 1 for k, v in agent.net.state_dict().items()}
    assert not agent.same_as(agent.with_weights(changed))


def real_observations(env_cfg, n: int) -> np.ndarray:
    """`n` observations of a real env played at random (CartPole states, Pong's stacks
    of 84x84 frames)."""
    from algos.core.envs import make_env

    env = make_env(env_cfg)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen = []
    while len(seen) < n:
        for _ in range(int(rng.integers(1, 20))):  # spread over an episode
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        seen.append(np.asarray(obs))
    env.close()
    return np.stack(seen)


CARTPOLE = {"id": "CartPole-v1"}
PONG = {"id": "ALE/Pong-v5", "kind": "atari"}


@pytest.mark.parametrize("env,outputs", [
    (CARTPOLE, "q_values"), (CARTPOLE, "probabilities"), (PONG, "q_values"),
], ids=["cartpole-dqn", "cartpole-reinforce", "pong-dqn"])
def test_a_network_exports_to_onnx_that_acts_as_pytorch_on_real_observations(
    tmp_path, env, outputs
):
    import onnx
    import onnxruntime

    from algos.core.envs import EnvConfig, make_env
    from algos.core.rlpipe_agent import PortableAgent

    env_cfg = EnvConfig(**env)
    probe = make_env(env_cfg)
    space, n_actions = probe.observation_space, int(probe.action_space.n)
    probe.close()
    torch.manual_seed(0)
    factory = NetworkFactory("auto", (64, 64))
    net = factory(space, gym.spaces.Discrete(n_actions))
    agent = NetworkAgent.of(net, factory, space, n_actions, outputs)
    save_agent(agent, tmp_path / "n", algo="dqn")
    path = tmp_path / "n" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["action", outputs]
    obs = real_observations(env_cfg, 64)
    assert obs.dtype == (np.uint8 if env is PONG else np.float32)
    assert obs.shape[1:] == ((4, 84, 84) if env is PONG else (4,))
    action, values = session.run(None, {"obs": obs})
    with torch.no_grad():
        logits = net(torch.as_tensor(obs))
        expected = logits if outputs == "q_values" else torch.softmax(logits, -1)
    assert np.array_equal(action, expected.argmax(1).numpy())
    np.testing.assert_allclose(values, expected.numpy(), rtol=1e-4, atol=1e-6)
    if outputs == "probabilities":
        np.testing.assert_allclose(values.sum(1), 1.0, rtol=1e-5)
    # the graph takes any batch size, one observation too; the portable loader acts alike
    assert session.run(["action"], {"obs": obs[:1]})[0].tolist() == action[:1].tolist()
    assert np.array_equal(PortableAgent(tmp_path / "n").act(obs), agent.act(obs))
