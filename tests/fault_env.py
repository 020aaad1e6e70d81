"""Real envs that fail on purpose, for the fault tests: a FrozenLake that fails once, and
envs whose reward turns NaN.

Used through gymnasium's module form, env.id=tests.fault_env:CrashOnceFrozenLake-v0, so
that the trial process imports and registers it itself. The failure happens once per
marker file: at the `crash_at`-th unseeded reset (training episodes; evaluation resets
are seeded), when the marker does not exist yet. mode=raise raises in the trial;
mode=exit kills the trial's worker process outright.
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv


class CrashOnceFrozenLake(FrozenLakeEnv):
    """FrozenLake 4x4 that fails once at a chosen training episode."""

    def __init__(self, marker: str, crash_at: int = 50, mode: str = "raise", **kwargs):
        super().__init__(map_name="4x4", is_slippery=False, **kwargs)
        self.marker = Path(marker)
        self.crash_at = crash_at
        self.mode = mode
        self.unseeded_resets = 0

    def reset(self, *, seed=None, options=None):
        if seed is None:
            self.unseeded_resets += 1
            if self.unseeded_resets == self.crash_at and not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                if self.mode == "exit":
                    os._exit(1)
                raise RuntimeError("injected fault: CrashOnceFrozenLake")
        return super().reset(seed=seed, options=options)


if "CrashOnceFrozenLake-v0" not in gym.registry:
    gym.register(
        "CrashOnceFrozenLake-v0",
        entry_point="tests.fault_env:CrashOnceFrozenLake",
        max_episode_steps=100,
    )


class NaNRewardAfter:
    """Mixed into an env: its reward is NaN from the `nan_from`-th step of its life on (a
    broken env, which must stop training at once rather than train on NaN)."""

    def __init__(self, nan_from: int = 600, **kwargs):
        super().__init__(**kwargs)
        self.nan_from, self.steps = nan_from, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        nan = self.steps >= self.nan_from
        return obs, float("nan") if nan else reward, terminated, truncated, info


class NaNRewardCartPole(NaNRewardAfter, CartPoleEnv):
    """CartPole with NaN rewards from its 600th step."""


class NaNRewardFrozenLake(NaNRewardAfter, FrozenLakeEnv):
    """FrozenLake 4x4, not slippery, with NaN rewards from its 600th step."""

    def __init__(self, nan_from: int = 600, **kwargs):
        super().__init__(nan_from, map_name="4x4", is_slippery=False, **kwargs)


for _name, _steps in (("NaNRewardCartPole-v0", 500), ("NaNRewardFrozenLake-v0", 100)):
    if _name not in gym.registry:
        gym.register(_name, entry_point=f"tests.fault_env:{_name[:-3]}",
                     max_episode_steps=_steps)
