"""The series the pipelines log, each named once: a trial's and a sweep's timings, PBT's
records, the summary's best configuration, and the keys of a trial's Tune results that
only the driver reads. The algorithms' own series (train/, eval/, test/, loss/ and the
throughput perf/*) are named in algos/core/metrics.py.

Every step is env steps, but for the parent run's records (timings, the summary, the
exploit count), which go one past their last step each time they are made again.
"""

from __future__ import annotations

PERF_PREFIX = "perf/"
"""Where time went (the algorithms' throughput also carries it: algos.core.metrics)."""

# A sweep's phases, on its parent run (benchmarks/sweep_efficiency adds them up).
STARTUP_S = "perf/startup_s"
"""The entry point's start to the launch planned: imports, every trial's config checked."""
RAY_START_AND_MLFLOW_S = "perf/ray_start_and_mlflow_s"
"""Ray started or joined, and meanwhile the MLflow experiment and parent run opened."""
TUNE_SETUP_S = "perf/tune_setup_s"
"""The Tuner built."""
SWEEP_WALL_S = "perf/sweep_wall_s"
"""Tune's fit, wall-clock."""
RAY_SHUTDOWN_S = "perf/ray_shutdown_s"
"""Ray shut down (the summary runs meanwhile)."""
SUMMARY_S = "perf/summary_s"
"""The summary's time beyond Ray's shutdown."""
TRIALS = "perf/trials"
"""Trials Tune ran."""

# A trial's own time, on its run.
TRIAL_PREFIX = "perf/trial_"
TRIAL_SETUP_S = "perf/trial_setup_s"
"""Composition looked up, MLflow run opened, checkpoint restored, system monitor started."""
TRIAL_TRAIN_S = "perf/trial_train_s"
"""The algorithm's own loop, less the three below."""
TRIAL_TRACKING_S = "perf/trial_tracking_s"
"""Metric writes to MLflow."""
TRIAL_CHECKPOINT_S = "perf/trial_checkpoint_s"
"""Checkpoints saved and handed to Tune."""
TRIAL_REPORT_WAIT_S = "perf/trial_report_wait_s"
"""Waiting in tune.report for the driver to take a result."""
TRIAL_TEST_S = "perf/trial_test_s"
"""The held-out test of the best agent."""
TRIAL_MODELS_S = "perf/trial_models_s"
"""The final and best agents logged as MLflow models."""
TRIAL_TEARDOWN_S = "perf/trial_teardown_s"
"""The last metrics, the last system sample, the run closed."""

# Population Based Training (pipelines.tracking.lineage).
HP_PREFIX = "hp/"
"""hp/<key>: the value of a mutable hyperparameter in use, from the step it took effect."""
PBT_PREFIX = "pbt/"
EXPLOITS = "pbt/exploits"
"""A member's exploits so far, stepped where each took effect; on the parent run, the
population's."""

BEST_PREFIX = "best/"
"""best/<env>/<figure>: the summary's best configuration of each env, on the parent run."""


def best(env: str, figure: str) -> str:
    """The parent run's series of `figure` (iqm, iqm_low, ...) of `env`'s best
    configuration."""
    return f"{BEST_PREFIX}{env}/{figure}"


SYSTEM_PREFIX = "system/"
"""MLflow's system metrics (pipelines.tracking.system_metrics)."""

# Keys of a trial's Tune results that the driver reads and MLflow never sees.
PROGRESS = "rlpipe/progress"
"""The fraction of the trial's training budget done (the driver's status line)."""
FAILURE = "rlpipe/failure"
"""Why a trial failed without an error, so that Tune does not retry it (non_finite)."""
FAILURE_MESSAGE = "rlpipe/failure_message"
"""What went wrong, in words."""
DONE = "done"
"""Tune's key of a trial's last result: it ends the trial, no scheduler acts on it."""
