"""The env factory: every env the algorithms use is built here from an :class:`EnvConfig`."""

import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from algos.core.validation import ConfigValueError, at_least, in_range, one_of, positive


@dataclass
class EnvConfig:
    """Which gymnasium env to build and with what arguments."""

    id: str = "FrozenLake-v1"
    """Gymnasium env id, e.g. FrozenLake-v1, Taxi-v3, CartPole-v1, ALE/Pong-v5."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gym.make (e.g. map_name, is_slippery)."""
    kind: str = "gym"
    """gym: gym.make(id, **kwargs) as it is; atari: an ALE game with the DQN preprocessing
    below (frame skip, 84x84 grayscale, frame stack, no-op starts)."""
    frame_skip: int = 4
    """atari: frames per agent step (the action repeats; max over the last two frames)."""
    frame_stack: int = 4
    """atari: frames stacked into one observation."""
    noop_max: int = 30
    """atari: up to this many no-op actions at the start of an episode."""
    screen_size: int = 84
    """atari: frames resized to screen_size x screen_size, grayscale."""
    repeat_action_probability: float = 0.25
    """atari: sticky actions; 0.25 is ALE v5's default, 0.0 matches NoFrameskip-v4."""
    max_episode_frames: int = 108_000
    """atari: episodes are truncated after this many emulator frames (30 minutes)."""
    episodic_life: bool = False
    """atari: a life lost ends the training episode, the game going on (SB3's and
    CleanRL's EpisodicLifeEnv); returns are still reported per game, and evaluation always
    plays full games."""
    fire_reset: bool = False
    """atari: press FIRE after each reset (and life lost), for games that wait for it
    (FireResetEnv)."""

    def __post_init__(self) -> None:
        one_of(self, "kind", ("gym", "atari"))
        positive(self, "frame_skip", "frame_stack", "screen_size", "max_episode_frames")
        at_least(self, "noop_max", 0)
        in_range(self, "repeat_action_probability", 0.0, 1.0)
        if self.kind == "atari" and not self.id.startswith("ALE/"):
            raise ConfigValueError("id", self.id, "kind=atari needs an ALE/<Game>-v5 id")
        for key in ("episodic_life", "fire_reset"):
            if getattr(self, key) and self.kind != "atari":
                raise ConfigValueError(key, True, "only with kind=atari")

    def full_games(self) -> "EnvConfig":
        """The same env playing whole games (evaluation: no episode ends at a life lost)."""
        import dataclasses

        return dataclasses.replace(self, episodic_life=False)


def ensure_registered(env_id: str) -> None:
    """Register the envs of the package that provides `env_id`: ale-py for ALE/*, and for
    gymnasium's 'module:EnvName-v0' form the module, which registers its envs on import."""
    if ":" in env_id:
        importlib.import_module(env_id.split(":", 1)[0])
    elif env_id.startswith("ALE/"):
        import ale_py

        # The emulator's banner ("A.L.E: Arcade Learning Environment ...") goes to stderr
        # at every env it makes: keep errors only, so bad input stays one line.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        gym.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Raise gymnasium's own error when `env_id` is not a registered env."""
    ensure_registered(env_id)
    gym.spec(env_id.split(":", 1)[-1])


def make_env(cfg: EnvConfig, **overrides: Any) -> gym.Env:
    """One env: gym.make(cfg.id, **cfg.kwargs, **overrides), with the Atari preprocessing
    when cfg.kind is atari."""
    ensure_registered(cfg.id)
    if cfg.kind != "atari":
        return gym.make(cfg.id, **{**cfg.kwargs, **overrides})
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    env = gym.make(
        cfg.id,
        frameskip=1,  # AtariPreprocessing skips frames itself
        repeat_action_probability=cfg.repeat_action_probability,
        max_num_frames_per_episode=cfg.max_episode_frames,
        **{**cfg.kwargs, **overrides},
    )
    env = AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=cfg.frame_skip,
                             screen_size=cfg.screen_size, grayscale_obs=True)
    if cfg.episodic_life:
        env = EpisodicLife(env)
    if cfg.fire_reset:
        env = FireReset(env)
    return FrameStackObservation(env, cfg.frame_stack)


class EpisodicLife(gym.Wrapper):
    """A life lost ends the episode (terminated), and the next reset continues the game
    with a no-op step instead of resetting it; info["game_over"] says which end it was."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        info["game_over"] = self.game_over
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE (action 1), then action 2, after a reset: games such as Breakout wait
    for FIRE to serve."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_vector_env(cfg: EnvConfig, num_envs: int) -> gym.vector.VectorEnv:
    """`num_envs` envs stepped together, with next-step autoreset: ale-py's native
    AtariVectorEnv (preprocessing in C++ threads) for Atari, else gymnasium's sync one."""
    ensure_registered(cfg.id)
    if cfg.kind == "atari":
        from ale_py.vector_env import AtariVectorEnv

        game = cfg.id.split("/", 1)[-1].split("-", 1)[0]
        game = "".join("_" + c.lower() if c.isupper() else c for c in game).lstrip("_")
        return AtariVectorEnv(
            game=game,
            num_envs=num_envs,
            num_threads=1,
            frameskip=cfg.frame_skip,
            stack_num=cfg.frame_stack,
            img_height=cfg.screen_size,
            img_width=cfg.screen_size,
            grayscale=True,
            noop_max=cfg.noop_max,
            repeat_action_probability=cfg.repeat_action_probability,
            max_num_frames_per_episode=cfg.max_episode_frames,
            reward_clipping=False,  # returns stay the game's score; the learner may clip
            # ale-py's life_loss_info is SB3's EpisodicLifeEnv: terminated at a life lost,
            # the game going on; its episodic_life resets the game at every life lost.
            life_loss_info=cfg.episodic_life,
            use_fire_reset=cfg.fire_reset,
            **cfg.kwargs,
        )
    return gym.vector.SyncVectorEnv([lambda: make_env(cfg) for _ in range(num_envs)])
