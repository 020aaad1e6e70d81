"""Where rollout-worker actors go: into the bundles their trial reserved."""

from __future__ import annotations

from typing import Any


def worker_options(index: int) -> dict[str, Any]:
    """Ray actor options that put worker `index` into bundle index + 1 of the current
    placement group (bundle 0 is the learner's), or {} outside one."""
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None or index + 1 >= len(pg.bundle_specs):
        return {}
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=index + 1
        )
    }
