"""A PBT member's schedule run again: `python -m pipelines.train replay=<sweep>/<trial>`
plans a train run that starts from the member's first values and, after the n-th report
of each change in its lineage, goes on from that report's state under the new values, in
the same process (as a member does after an exploit). The schedule is Tune's own reading
of the member's policy file (PopulationBasedTrainingReplay)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import private_api
from pipelines.config.compose import UserError, compose_and_check, compose_config
from pipelines.config.space import plan_sweep
from pipelines.tune.context import TrialContext, combo_of
from pipelines.tune.plan import CONTEXT_FILE, Launch, plan_launch, storage_root

POLICY_PREFIX = "pbt_policy_"
POLICY_FILE = POLICY_PREFIX + "{trial_id}.txt"
"""Beside a PBT sweep's Tune run: a member's schedule, as Tune's PBT logs it."""
SCHEDULER = "replay"
"""A replay's RunSettings.scheduler."""


def _policy(replay: str, storage: str) -> tuple[Path, TrialContext]:
    """The member's policy file and its sweep's saved context; bad input when either is
    missing."""
    sweep_name, _, trial_id = replay.rpartition("/")
    folder = Path(storage) / sweep_name
    if not sweep_name or not (folder / CONTEXT_FILE).exists():
        raise UserError(f"replay={replay}: no sweep {sweep_name or '?'} in "
                        f"{folder.parent}; give <sweep name>/<trial id>")
    policy = folder / POLICY_FILE.format(trial_id=trial_id)
    if not policy.exists():
        known = sorted(p.stem.removeprefix(POLICY_PREFIX)
                       for p in folder.glob(POLICY_FILE.format(trial_id="*")))
        raise UserError(f"replay={replay}: trial {trial_id} has no schedule (it never "
                        f"exploited, or the sweep was not pbt/pb2); with one: "
                        f"{', '.join(known) or 'none'}")
    return policy, TrialContext.from_json(json.loads((folder / CONTEXT_FILE).read_text()))


def plan_replay(parsed) -> Launch:
    """The launch of `replay=<sweep>/<trial>`: a train run of the sweep's fixed overrides
    (what is given now wins) with the member's first values, each configuration of its
    schedule composed and checked now, and carried to the trial. Only cluster.* and
    progress.* may come with it."""
    others = [o.input_line for o in parsed if o.key_or_group != "replay"
              and not o.key_or_group.startswith(("cluster", "progress"))]
    if others:
        raise UserError(f"{others[0]}: a replay runs the sweep's own settings; only "
                        "cluster.* and progress.* may be given with replay=")
    cfg = compose_config([o.input_line for o in parsed]).cfg
    replay = str(cfg.replay)
    policy, ctx = _policy(replay, storage_root(cfg.cluster))
    initial, changes = private_api.pbt_schedule(str(policy))
    first = [f"{k}={v}" for k, v in initial.items()]
    given = [o.input_line for o in parsed if o.key_or_group != "replay"]
    plan = plan_sweep(list(ctx.fixed) + given + first, sweep_params=False)
    mutations = list(ctx.settings.mutations)
    schedule = [(at, {k: v for k, v in config.items() if k in mutations})
                for at, config in changes]
    for _, values in schedule:  # as the trial will compose each: checked, then carried
        plan.trials.append((combo_of(values), compose_and_check(
            plan.fixed + [f"{k}={v}" for k, v in values.items()])))
    launch = plan_launch(plan, "train")
    sweep_name, _, trial_id = replay.rpartition("/")
    launch.name = f"replay-{sweep_name}-{trial_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    launch.settings.scheduler = SCHEDULER
    launch.settings.mutations = mutations
    launch.settings.replay_of = replay
    launch.settings.schedule = schedule
    return launch


def due(schedule: Sequence[tuple[int, Mapping[str, Any]]], reports: int) -> dict[str, Any]:
    """The values a replay's schedule set by its `reports`-th report (later ones win)."""
    values: dict[str, Any] = {}
    for at, changes in sorted(schedule, key=lambda entry: entry[0]):
        if at <= reports:
            values.update(changes)
    return values


class ScheduleChange(Exception):
    """A replay's schedule changes hyperparameters after this report: the algorithm stops
    here, and goes on from `state` under the new values."""

    def __init__(self, state: dict[str, Any], values: dict[str, Any]) -> None:
        super().__init__(f"schedule: {values}")
        self.state, self.values = state, values


class ReplaySchedule:
    """A trial's replayed schedule: after the n-th report of a change, ScheduleChange."""

    def __init__(self, schedule: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
        self.schedule = list(schedule)

    def after(self, reports: int, state: Mapping[str, Any] | None, saved: bool) -> None:
        """After the trial's `reports`-th report, whose `state` was checkpointed (`saved`):
        stop the algorithm there when the schedule changes values."""
        changes = {k: v for at, values in self.schedule if at == reports
                   for k, v in values.items()}
        if changes and state is not None and saved:
            raise ScheduleChange(dict(state), changes)


def replay_line(ctx: TrialContext, trial_id: str | None) -> str:
    """The command that trains a fresh run with the schedule of the PBT member
    `trial_id`, or why there is none (it never exploited)."""
    folder = Path(storage_root(ctx.settings.cluster)) / ctx.name
    if not trial_id or not (folder / POLICY_FILE.format(trial_id=trial_id)).exists():
        return (f"The best member ({trial_id}) never exploited: its first values ran "
                "throughout (its run's params).")
    return (f"Replay the best member's schedule in a fresh run: python -m pipelines.train "
            f"replay={ctx.name}/{trial_id}")
