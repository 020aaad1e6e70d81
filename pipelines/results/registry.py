"""The registry: a sweep's (or a train run's) best model registered, and the alias that
names a registered model's best version."""

from __future__ import annotations

from typing import Any

from algos.core.metrics import TEST_SCORE
from pipelines import private_api
from pipelines.results.play import play
from pipelines.tracking.models import load_logged_agent

CHAMPION = "best"
"""The alias of a registered model's best version."""


def register_champion(client, tracking_uri: str, name: str, model_id: str,
                      source_run_id: str) -> dict[str, Any]:
    """Add the model as a new version of the registered model `name`, tagged with its
    test/score (played greedily on its held-out seeds, which no evaluation of its run
    played); then point the alias `best` at the best version of all (settle_alias).
    Returns name, version, score, moved (whether the alias is on this version), and the
    version holding the alias with its score."""
    ensure_registered_model(client, name)
    # The store resolves the models:/ source through the process-wide tracking URI.
    with private_api.mlflow_store(tracking_uri):
        version = str(client.create_model_version(name, source=f"models:/{model_id}",
                                                  run_id=source_run_id,
                                                  model_id=model_id).version)
    challenger, manifest = load_logged_agent(f"models:/{model_id}", tracking_uri)
    score = play(challenger, manifest, held_out=True)["score"]
    client.set_model_version_tag(name, version, TEST_SCORE, str(score))
    champion, champion_score = settle_alias(client, name)
    return {"name": name, "version": version, "score": score, "moved": champion == version,
            "champion_version": champion, "champion_score": champion_score}


def ensure_registered_model(client, name: str) -> None:
    """The registered model `name`, made unless it exists; a registration beside this one
    may make it first (RESOURCE_ALREADY_EXISTS), which is as good."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def best_version(client, name: str) -> tuple[str, float] | None:
    """The version of `name` with the highest test/score tag, the earlier among equals
    (a version still being registered has no tag yet)."""
    scored = [(float(v.tags[TEST_SCORE]), -int(v.version))
              for v in client.search_model_versions(f"name = '{name}'")
              if TEST_SCORE in v.tags]
    if not scored:
        return None
    score, version = max(scored)
    return str(-version), score


def settle_alias(client, name: str, rounds: int = 20) -> tuple[str, float]:
    """Point the alias `best` at the best version now visible, then look again until a
    look finds it there: the registry has no transactions, and a registration that read
    before another's version was tagged may set the alias after it. Each registration
    looks again after it sets, so the last to set sees every version and corrects a stale
    setter: whatever the order, the alias ends on the version with the highest test/score.
    Returns that version and its score."""
    from mlflow.exceptions import MlflowException

    for _ in range(rounds):
        found = best_version(client, name)
        if found is None:
            raise LookupError(f"no version of {name} has a {TEST_SCORE} tag")
        try:
            holder = str(client.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException:
            holder = None
        if holder == found[0]:
            return found
        client.set_registered_model_alias(name, CHAMPION, found[0])
    raise RuntimeError(f"the alias {CHAMPION} of {name} did not settle in {rounds} rounds")
