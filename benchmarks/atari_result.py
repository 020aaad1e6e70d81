"""An Atari training run's result, read back from MLflow: results/<name>.json, its learning
curve (PNG) and its best model (a .tar.gz of the MLflow model folder).

benchmarks/gpu_session.sh runs it after `python -m pipelines.train` and `python -m
pipelines.evaluate evaluate.run_id=<the run>` (the best model on the course's evaluation
protocol): the JSON holds the run's final and best evaluations, the best model's
evaluation, the env steps, the wall time, the training command and the machine; the PNG
and the model are written beside it (--out), the model so that its replay video can be
recorded on a machine with ffmpeg (the GPU machines have none).
Usage: python -m benchmarks.atari_result --uri sqlite:///mlflow.db --experiment NAME
       --evaluation evaluation.json --train-command "..." [--name NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from algos.core import metrics as m
from benchmarks.common import write


def curve(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    """A metric's (step, value) points, in step order."""
    return sorted((p.step, p.value) for p in client.get_metric_history(run_id, metric))


def plot(points: list[tuple[int, float]], title: str, path: Path) -> None:
    """The evaluation score against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o")
    ax.set(title=title, xlabel="env steps", ylabel=m.EVAL_SCORE)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    """Read the run and its evaluation back, write the JSON, the PNG and the video."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", required=True, help="the MLflow tracking URI of the run")
    parser.add_argument("--experiment", required=True, help="the run's MLflow experiment")
    parser.add_argument("--evaluation", required=True,
                        help="the JSON line pipelines.evaluate printed")
    parser.add_argument("--train-command", required=True)
    parser.add_argument("--name", default="space_invaders_dqn")
    parser.add_argument("--out", default=".", help="where the PNG and the mp4 go")
    args = parser.parse_args()
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.uri)  # models:/ URIs resolve through the global store
    client = MlflowClient(args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {args.experiment!r} at {args.uri}")
    runs = [r for r in client.search_runs([experiment.experiment_id],
                                          order_by=["attributes.start_time DESC"])
            if r.data.tags.get("rlpipe.kind") != "evaluate"]
    if not runs:
        raise SystemExit(f"no training run in {args.experiment!r}")
    run = runs[0]
    scores = curve(client, run.info.run_id, m.EVAL_SCORE)
    steps = curve(client, run.info.run_id, m.ENV_STEPS)
    evaluation = json.loads(Path(args.evaluation).read_text().strip().splitlines()[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if scores:
        plot(scores, f"{args.name}: {run.info.run_id[:8]}", out / f"{args.name}.png")
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=evaluation["model"],
                                                     dst_path=tmp)
        shutil.make_archive(str(out / f"{args.name}_best_model"), "gztar", folder)
    wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
    data = {
        "train_command": args.train_command, "run_id": run.info.run_id,
        "status": run.info.status, "env_steps": steps[-1][1] if steps else 0,
        "wall_s": wall, "final_score": scores[-1][1] if scores else None,
        "best_score": max(v for _, v in scores) if scores else None,
        "eval_scores": scores, "test": {k: v for k, v in run.data.metrics.items()
                                        if k.startswith(m.TEST_PREFIX)},
        "best_model_evaluation": evaluation,
    }
    print(json.dumps({k: v for k, v in data.items() if k != "eval_scores"}, default=str))
    print(f"written to {write(args.name, data)}")


if __name__ == "__main__":
    main()
