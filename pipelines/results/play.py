"""Agents played greedily on their seeds: a logged model on its run's evaluation seeds or
its held-out test seeds, the held-out test of a run's best agent (test/*, the figure a
run, a sweep and the registry report), and one episode recorded as a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from algos.core.metrics import TEST_MEAN_RETURN, TEST_SCORE, TEST_STD_RETURN, score
from pipelines.config.compose import Composed


def held_out_test(composed: Composed, result: Any) -> dict[str, float]:
    """The run's best agent (`result`: its train()'s) played as its evaluations play, on
    seeds none of them played (the best was picked on theirs): test/mean_return,
    test/std_return, test/score."""
    algorithm, cfg = composed.algorithm, composed.cfg
    seeds = algorithm.evaluation(cfg.algo)["test_seeds"]
    mean, std, _ = algorithm.evaluate(result.agents()["best"].model, cfg.env, seeds, cfg.algo)
    return {TEST_MEAN_RETURN: mean, TEST_STD_RETURN: std, TEST_SCORE: score(mean, std)}


def play(agent, manifest: dict[str, Any], episodes: int | None = None, seed: int = 0,
         video: Path | None = None, held_out: bool = False) -> dict[str, Any]:
    """Play the agent greedily: on the run's own evaluation seeds, or with `held_out` on
    its held-out test seeds, or `episodes` episodes on seeds seed, seed+1, ...; with
    `video`, the first episode is also recorded there as an mp4. Returns episodes,
    mean_return, std_return, score, seeds."""
    from algos.core.envs import EnvConfig
    from algos.core.evaluation import held_out_seeds, play_episodes

    evaluation = manifest["evaluation"]
    if episodes:
        seeds = list(range(seed, seed + episodes))
    elif held_out:  # (models saved before the manifest held them: the same seeds)
        seeds = list(evaluation.get("test_seeds") or held_out_seeds(evaluation["seeds"]))
    else:
        seeds = list(evaluation["seeds"])
    env_cfg = EnvConfig(**manifest["env"])
    mean, std, returns = play_episodes(env_cfg, seeds, agent.act, evaluation.get("max_steps"))
    out = {"episodes": len(returns), "mean_return": mean, "std_return": std,
           "score": score(mean, std), "seeds": seeds}
    if video is not None:
        out["video_frames"] = record_episode(agent, env_cfg, seeds[0],
                                             evaluation.get("max_steps"), video)
    return out


def record_episode(agent, env_cfg, seed: int, max_steps: int | None, path: Path) -> int:
    """Play one episode from reset seed `seed` and write its frames (render_mode
    rgb_array: Atari at its native 210x160) to `path` as an mp4; the number of frames."""
    import os

    from algos.core.envs import make_env

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # gymnasium renders with it
    env = make_env(env_cfg.full_games(), render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames: list[np.ndarray] = [np.asarray(env.render())]
    steps = 0
    while max_steps is None or steps < max_steps:
        action = agent.act(np.asarray(obs)[None])[0]
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(np.asarray(env.render()))
        steps += 1
        if terminated or truncated:
            break
    env.close()
    write_mp4(frames, int(env.metadata.get("render_fps") or 30), path)
    return len(frames)


def write_mp4(frames: list[np.ndarray], fps: int, path: Path) -> None:
    """RGB frames as an H.264 mp4 (yuv420p), which browsers play: the MLflow UI and the
    Hugging Face Hub show it in the page. ffmpeg comes with imageio-ffmpeg."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    even = (height + height % 2, width + width % 2)  # yuv420p wants even sides
    writer = imageio_ffmpeg.write_frames(
        str(path), (even[1], even[0]), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        if frame.shape[:2] != even:
            frame = np.pad(frame, ((0, even[0] - height), (0, even[1] - width), (0, 0)))
        writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
    writer.close()
