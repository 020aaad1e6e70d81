"""python -m pipelines.package package.model=<model URI> package.dir=<folder>: a logged
agent packed for the Hugging Face Hub as the course's `push_to_hub` packs it, and
uploaded with package.push=true package.repo_id=<user>/<name>.

The folder holds the MLflow model as it is (MLmodel, its loader in code/, the agent's
files under data/, requirements.txt: `mlflow.pyfunc.load_model(<folder>)` loads it), and
beside it what the course's package holds:

- README.md, the model card: its metadata names the env, the library, the tags and a
  model-index entry of `mean_reward` ("mean +/- std"), made by huggingface_hub's own
  metadata_eval_result;
- results.json: the env id, mean and std reward, the score, the episodes and their reset
  seeds, the date;
- replay.mp4: the first evaluation episode (H.264, which the Hub's page plays);
- hyperparameters.json: the params of the run that trained the agent.

The folder is written beside its destination and renamed into place when complete, so a
failure leaves nothing half-written. Runs in this process: no Ray.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from pipelines.cli import exit_with, run_main
from pipelines.config.compose import UserError, compose_config, parse_overrides

SUMMARY = ("Pack a logged agent (an MLflow model) for the Hugging Face Hub: the model, a "
           "model card,\nresults.json, replay.mp4 and the hyperparameters; push it with "
           "package.push=true.")
EXAMPLES = [
    "package.model=models:/sweeps-taxi@best package.dir=hub/taxi",
    "package.model=models:/sweeps-cartpole@best package.dir=hub/cartpole "
    "package.episodes=100 package.seed=1000",
    "package.model=models:/sweeps-taxi@best package.dir=hub/taxi package.push=true "
    "package.repo_id=<user>/q-Taxi-v3",
]
LIBRARY = "rlpipe"
"""The model card's library_name."""
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
"""<user or organization>/<name>, as the Hub allows them (huggingface_hub's
validate_repo_id checks the rest: no '--' or '..', no trailing '.git')."""


def check_target(cfg) -> Path:
    """The folder to write, absolute; bad input (UserError) for the folder and the upload,
    before anything is read or written: a folder that exists and is not empty; push
    without a valid repo_id or without a token."""
    target = Path(cfg.dir) if cfg.dir else None
    if target is None:
        raise UserError("package.dir: required, the folder to write (it must not exist, "
                        "or be empty)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"package.dir={cfg.dir}: exists and is not an empty folder; give a "
                        "new folder")
    if cfg.repo_id is not None:
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            if not REPO_ID.match(cfg.repo_id):
                raise HFValidationError("not <user>/<name>")
            validate_repo_id(cfg.repo_id)
        except HFValidationError as e:
            raise UserError(f"package.repo_id={cfg.repo_id}: not a Hub repository id "
                            f"({str(e).splitlines()[0][:120]}); allowed: <user or "
                            "organization>/<name> of letters, digits, '-', '_' and '.'") \
                from None
    if cfg.push:
        if cfg.repo_id is None:
            raise UserError("package.repo_id: required with package.push=true "
                            "(<user>/<name>)")
        if hub_token() is None:
            raise UserError("package.push=true: no Hugging Face token; set HF_TOKEN or run "
                            "`hf auth login` (a token with write access)")
    return target.resolve()


def hub_token() -> str | None:
    """The token of HF_TOKEN, or of the user's login; None when there is none."""
    from huggingface_hub import get_token

    return get_token()


def env_name(env: dict[str, Any]) -> str:
    """The env's name on the Hub as the course writes it: the id, and for FrozenLake its
    map and '-no_slippery' when it is not slippery (FrozenLake-v1-4x4-no_slippery)."""
    kwargs = env.get("kwargs") or {}
    name = env["id"]
    if "map_name" in kwargs:
        name += f"-{kwargs['map_name']}"
    if kwargs.get("is_slippery") is False:
        name += "-no_slippery"
    return name


def model_card(manifest: dict[str, Any], results: dict[str, Any], repo_id: str | None
               ) -> tuple[dict[str, Any], str]:
    """(the card's metadata, its text) for an agent and its evaluation."""
    from huggingface_hub import metadata_eval_result

    env = results["env_id"]
    algo = manifest["algo"]
    tag = algo.replace("_", "-")  # the Hub's tag: q-learning, monte-carlo, dqn, ...
    metadata = metadata_eval_result(
        model_pretty_name=f"{tag}-{env}", task_pretty_name="reinforcement-learning",
        task_id="reinforcement-learning", metrics_pretty_name="mean_reward",
        metrics_id="mean_reward",
        metrics_value=f"{results['mean_reward']:.2f} +/- {results['std_reward']:.2f}",
        dataset_pretty_name=env, dataset_id=env)
    metadata.update(library_name=LIBRARY, tags=[
        env, tag, "reinforcement-learning", "custom-implementation", "deep-rl-course"])
    repo = repo_id or "<user>/<name>"
    text = f"""
# **{tag}** agent playing **{env}**

A **{tag}** agent playing **{env}**, trained with {LIBRARY} (the Hugging Face Deep RL
course's algorithms run as experiments: Hydra configs, Ray Tune sweeps, MLflow tracking).

## Evaluation

Mean reward {results['mean_reward']:.2f} +/- {results['std_reward']:.2f} (score, mean
minus std: {results['score']:.2f}) over {results['n_evaluation_episodes']} greedy episodes
on reset seeds {_seeds(results['eval_seeds'])}; `results.json` has the figures and
`replay.mp4` shows the first episode.

## Usage

This folder is an MLflow model: its loader (`code/rlpipe_agent.py`) needs numpy, and
onnxruntime for a network, not {LIBRARY} itself.

```python
from huggingface_hub import snapshot_download
import mlflow  # pip install -r requirements.txt (in the downloaded folder)

path = snapshot_download("{repo}")
agent = mlflow.pyfunc.load_model(path)
actions = agent.predict(observations)  # a batch of observations -> one action each
```

A network is also `data/agent/model.onnx` (outputs `action` and the Q-values or the action
probabilities), for onnxruntime in any language.

## Hyperparameters

`hyperparameters.json`: the params of the training run ({manifest.get('model', 'best')}
agent at env step {manifest.get('step')}).
"""
    return metadata, text


def _seeds(seeds: list[int]) -> str:
    """Seeds in a line: a range when they are consecutive."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]} to {seeds[-1]}"
    return ", ".join(map(str, seeds[:10])) + (", ..." if len(seeds) > 10 else "")


def write_package(folder: Path, local_model: Path, agent, manifest: dict[str, Any],
                  params: dict[str, str], cfg, model_uri: str) -> dict[str, Any]:
    """Write the package into `folder` (an empty folder); its results."""
    import datetime
    import shutil

    from huggingface_hub import metadata_save

    from pipelines.results.play import play

    shutil.copytree(local_model, folder, dirs_exist_ok=True)
    video = folder / "replay.mp4" if cfg.video else None
    figures = play(agent, manifest, cfg.episodes, cfg.seed, video, held_out=True)
    results = {
        "env_id": env_name(manifest["env"]), "mean_reward": figures["mean_return"],
        "std_reward": figures["std_return"], "score": figures["score"],
        "n_evaluation_episodes": figures["episodes"], "eval_seeds": figures["seeds"],
        "eval_datetime": datetime.datetime.now(datetime.UTC).isoformat(),
        "model_uri": model_uri, "source_run_id": manifest.get("source_run_id"),
        "algo": manifest["algo"],
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "hyperparameters.json").write_text(json.dumps(
        dict(sorted(params.items())), indent=2) + "\n")
    metadata, text = model_card(manifest, results, cfg.repo_id)
    (folder / "README.md").write_text(text.lstrip())
    metadata_save(folder / "README.md", metadata)
    return results


def run_params(client, mlmodel: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    """The params of the run that trained the agent: the logged model's own (a copy of
    its run's), else its source run's; {} when neither is there any more."""
    from mlflow.exceptions import MlflowException

    try:
        if mlmodel.get("model_id"):
            return dict(client.get_logged_model(mlmodel["model_id"]).params)
        if manifest.get("source_run_id"):
            return dict(client.get_run(manifest["source_run_id"]).data.params)
    except MlflowException:
        pass
    return {}


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the folder to the Hub repository `repo_id` (made if needed); its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token())
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=f"Upload {folder.name}, packed by {LIBRARY}")
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo_id}"))


def _body(args: list[str]) -> int:
    import shutil
    import tempfile

    from mlflow import MlflowClient

    from algos.core.agents import AgentFileError
    from algos.registry import load_agent
    from pipelines.evaluate import check_model_arg
    from pipelines.tracking.models import download_model
    from pipelines.tracking.uri import readable_store

    for o in parse_overrides(args):
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a sweep expression; package packs one model")
    cfg = compose_config(args).cfg
    pkg = cfg.package
    check_model_arg(pkg.model, None, key="package")
    model_uri, target = str(pkg.model), check_target(pkg)
    uri = readable_store(cfg.tracking.uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        (Path(tmp) / "download").mkdir()
        try:
            local, mlmodel = download_model(model_uri, uri, Path(tmp) / "download")
            agent, manifest = load_agent(
                local / mlmodel["flavors"]["python_function"]["data"])
        except (LookupError, AgentFileError) as e:
            raise UserError(f"package.model={model_uri}: {e}") from None
        params = run_params(MlflowClient(uri), mlmodel, manifest)
        staged = Path(tmp) / "package"
        results = write_package(staged, local, agent, manifest, params, pkg, model_uri)
        if target.exists():
            target.rmdir()  # empty: checked above
        shutil.move(str(staged), str(target))
    out = {"dir": str(target), "model": model_uri, **{k: results[k] for k in (
        "env_id", "mean_reward", "std_reward", "score", "n_evaluation_episodes")}}
    if pkg.push:
        try:
            out["url"] = push(target, str(pkg.repo_id), pkg.private)
        except Exception as e:  # the Hub's and the network's errors alike
            print(f"error: package.push: the upload to {pkg.repo_id} failed "
                  f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); the "
                  f"package is complete in {target}: push it again with `hf upload "
                  f"{pkg.repo_id} {target}`", file=sys.stderr)
            print(json.dumps(out))
            return 1
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return run_main("pipelines.package", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.package, or the rlpipe-package command."""
    exit_with(main())


if __name__ == "__main__":
    command()
