"""The Atari env options of the published DQN runs: a life lost ends a training episode
(the game goes on), FIRE on reset; returns are reported per game and evaluation plays
whole games. Real ALE envs."""

from __future__ import annotations

import numpy as np

from algos.core.envs import EnvConfig, make_env
from algos.core.evaluation import play_episodes
from algos.core.networks import NetworkFactory
from algos.core.rollout import RolloutWorker

BREAKOUT = EnvConfig(id="ALE/Breakout-v5", kind="atari", repeat_action_probability=0.0,
                     episodic_life=True, fire_reset=True)


def test_a_life_lost_ends_the_episode_and_the_game_goes_on():
    env = make_env(BREAKOUT)
    env.reset(seed=0)
    lives = env.unwrapped.ale.lives()
    rng = np.random.default_rng(0)
    for _ in range(5000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if terminated or truncated:
            break
    assert terminated and not info["game_over"]  # a life, not the game
    env.reset()
    assert env.unwrapped.ale.lives() == lives - 1  # the same game, one life less
    env.close()


def test_returns_are_reported_per_game_while_episodes_end_per_life():
    worker = RolloutWorker(BREAKOUT, 2, NetworkFactory("auto", ()), seed=0)
    batch = worker.sample(3000, epsilon=1.0)
    games = len(batch["episodes"])
    life_ends = int(batch["terminated"].sum())
    assert games >= 1 and life_ends >= 3 * games  # 5 lives a game
    # a game's return is all its lives' rewards: at least as much as any one life's
    assert sum(r for r, *_ in batch["episodes"]) <= float(batch["rewards"].sum())


def test_evaluation_plays_whole_games():
    full = EnvConfig(id="ALE/Breakout-v5", kind="atari", repeat_action_probability=0.0,
                     fire_reset=True)

    def random_player():
        rng = np.random.default_rng(0)
        return lambda obs: rng.integers(4, size=len(obs))

    lives_config = play_episodes(BREAKOUT, [7, 8], random_player())
    whole = play_episodes(full, [7, 8], random_player())
    assert lives_config == whole


def test_atari_evaluation_takes_any_seeds_one_per_game():
    # ale-py's vector env takes seeds as a first seed or an array: a list that is not a
    # run of consecutive seeds plays each game as that seed alone does.
    full = EnvConfig(id="ALE/Breakout-v5", kind="atari", repeat_action_probability=0.0,
                     fire_reset=True)

    def player(obs):  # deterministic: the same screen, the same action
        return (obs.reshape(len(obs), -1).sum(1) % 4).astype(np.int64)

    seeds = [9, 4, 2]  # first 400 steps: 0, 2 and 0 points
    together = play_episodes(full, seeds, player, max_steps=400)[2]
    alone = [play_episodes(full, [seed], player, max_steps=400)[2][0] for seed in seeds]
    assert together == alone and len(set(together)) == 2


def test_an_atari_video_is_the_episode_at_native_resolution(tmp_path):
    # evaluate.video's recorder on a real ALE game: every frame, 210x160 RGB as the
    # console draws it, not the agent's 84x84 grey stack, read back by a real decoder.
    import cv2
    import torch

    from algos.core.agents import NetworkAgent
    from pipelines.results.play import record_episode

    env = make_env(BREAKOUT)
    factory = NetworkFactory("auto", ())
    torch.manual_seed(0)  # an untrained network whose actions lose no game in 150 steps
    agent = NetworkAgent.of(factory(env.observation_space, env.action_space), factory,
                            env.observation_space, int(env.action_space.n))
    env.close()
    path = tmp_path / "episode.mp4"
    frames = record_episode(agent, BREAKOUT, seed=0, max_steps=150, path=path)
    assert frames == 151  # the reset frame and one per step (no game ends in 150 steps)
    capture = cv2.VideoCapture(str(path))
    shapes, read = set(), 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shapes.add(frame.shape)
        read += 1
    capture.release()
    assert read == frames and shapes == {(210, 160, 3)}
    import imageio_ffmpeg  # H.264 in yuv420p: what browsers play (the MLflow UI, the Hub)

    meta = next(imageio_ffmpeg.read_frames(str(path)))
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p"), meta
