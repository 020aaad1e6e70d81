"""Every use of a library's private API, in one place.

Each is something the library does but does not publish, and each may move at an upgrade.
tests/test_private_api.py calls every function here against the installed versions, so
an upgrade that changes one fails there, by name, not somewhere in a run.

- Hydra: its command-line parser and its app object, so that --cfg, --info, -m and
  --shell-completion are Hydra's own without @hydra.main (whose exit codes and output
  the contract cannot keep).
- OmegaConf: a config node's children as nodes, and whether a node is missing or None,
  to walk a typed config without resolving it.
- MLflow: the process-wide tracking and registry URIs, set for a block and put back; the
  system-metrics monitor (CPU, memory, GPU) on a run of our own (MLflow starts it only
  for a fluent run), made to queue what the server did not take, and its last sample at
  the run's end; the tag that marks an artifact as a table.
- Ray: this machine's resources as a local Ray will see them, before Ray starts; the
  cluster's key-value store, where trials leave their progress for the driver; a PBT
  member's schedule as Tune's PopulationBasedTrainingReplay reads its policy file; what
  PBT keeps of each member (its last time, whether it perturbs in lockstep), to choose
  which member runs next; the group a Repeater keeps for each repeated configuration;
  the Optuna study of an OptunaSearch as Tune saved it beside a run, and the scheduler
  a Tuner pickled there (what the tests read back to see what a sweep told Optuna and
  which scheduler ran).

tests/test_private_api.py checks that no other module of pipelines/ or benchmarks/ reads a
private attribute of another library, and that its own tests call every function here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("rlpipe")

# ----- Hydra --------------------------------------------------------------------------


def hydra_args_parser() -> argparse.ArgumentParser:
    """The argument parser of @hydra.main (hydra._internal.utils.get_args_parser)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def hydra_app(conf_dir: str, task_name: str):
    """Hydra's app object over `conf_dir`, as @hydra.main makes it, version_base 1.3: what
    carries out --cfg (show_cfg), --info (show_info) and --shell-completion."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import setbase

    setbase("1.3")
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=task_name,
                                    config_search_path=create_config_search_path(conf_dir))


# ----- OmegaConf ----------------------------------------------------------------------


def child_node(node, key: str):
    """The child `key` of a DictConfig as a node (not its value): a missing or None child
    stays inspectable."""
    return node._get_node(key)


def is_missing(node) -> bool:
    """Whether a node's value is ??? (MISSING)."""
    return node._is_missing()


def is_none(node) -> bool:
    """Whether a node's value is None."""
    return node._is_none()


# ----- MLflow -------------------------------------------------------------------------

_STORE_LOCK = threading.RLock()
"""Held while mlflow_store has the process-wide URIs set: two threads registering at once
(tests/test_team_server.py's race) would otherwise restore each other's URI and leave the
process pointed at a store it was never meant to use."""


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to `uri` for the block, then
    put back as they were (MLflow's own _use_tracking_uri, and the same for the registry):
    models:/ URIs and log_model resolve through them, whatever store a client was given,
    and a library must not leave them changed for the rest of the process."""
    from mlflow.environment_variables import MLFLOW_REGISTRY_URI
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _STORE_LOCK:  # process state: threads of one process take turns
        saved = registry._registry_uri, MLFLOW_REGISTRY_URI.get()
        with _use_tracking_uri(uri):
            registry.set_registry_uri(uri)
            try:
                yield
            finally:
                registry._registry_uri = saved[0]
                if saved[1] is None:
                    MLFLOW_REGISTRY_URI.unset()
                else:
                    MLFLOW_REGISTRY_URI.set(saved[1])


TABLE_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""The run tag (mlflow.utils.mlflow_tags.MLFLOW_LOGGED_ARTIFACTS) that tells the UI which
artifacts are tables (mlflow.log_table writes it)."""


def system_metrics_monitor(run_id: str, every_s: float, resume: bool, tracking_uri: str):
    """MLflow's SystemMetricsMonitor on a run, sampling every `every_s` seconds; with
    `resume`, its steps continue after the run's last system/* step (else from 0).

    Two changes to MLflow's, so that an unreachable server loses nothing. A sample takes
    its step when it is taken, and a write the server did not take (after the client's own
    retries) stays queued and goes again with a later sample's, with its own timestamps:
    a write the server took after all is not stored twice. MLflow's monitor instead stops
    for the rest of the run at the first failed write, and its last sample reuses the
    failed one's step. Nor does it ask the server each interval whether the run still
    runs (a failed read stopped it too): the trial stops it before it ends the run.
    Writes are paced as MLflow's are: after a write that took d seconds, samples queue
    for SEND_PACING * d seconds, so a slow server gets fewer, larger writes."""
    return _monitor_class()(run_id, sampling_interval=every_s, resume_logging=resume,
                            tracking_uri=tracking_uri)


SEND_PACING = 10
"""A system-metrics write that took d seconds holds the next one back for 10 * d: as
MLflow's BatchMetricsLogger, at most about a tenth of the monitor's time goes to writing."""


@functools.cache
def _monitor_class():
    from mlflow.entities import Metric
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    class QueuedSystemMetricsMonitor(SystemMetricsMonitor):
        def __init__(self, run_id: str, **kwargs) -> None:
            super().__init__(run_id, **kwargs)
            self.client = self.mlflow_logger.client  # the one MLflow's logger made
            self.unsent: list[Metric] = []
            """Points the server has not taken yet, oldest first."""
            self.next_send = 0.0
            """time.monotonic() before which samples only queue."""

        def monitor(self) -> None:
            while not self._shutdown_event.is_set():
                for _ in range(self.samples_before_logging):
                    self.collect_metrics()
                    if self._shutdown_event.wait(self.sampling_interval):
                        return
                self.publish_metrics(self.aggregate_metrics())

        def publish_metrics(self, metrics: dict[str, float]) -> None:
            prefix = self._metrics_prefix + (self.node_id + "/" if self.node_id else "")
            now, step = int(time.time() * 1000), self._logging_step
            self._logging_step += 1
            self.unsent += [Metric(prefix + k, v, now, step) for k, v in metrics.items()]
            for m in self.monitors:
                m.clear_metrics()
            if time.monotonic() >= self.next_send:
                self.send()

        def send(self) -> bool:
            """Write the queued points; False (and they stay queued) if the server did
            not take them."""
            started = time.monotonic()
            try:
                while self.unsent:
                    batch = self.unsent[:MAX_METRICS_PER_BATCH]
                    try:
                        self.client.log_batch(self._run_id, metrics=batch)
                    except Exception as e:
                        log.debug("system metrics queued (%d points): %s", len(self.unsent),
                                  e)
                        return False
                    del self.unsent[:len(batch)]
                return True
            finally:
                now = time.monotonic()
                self.next_send = now + SEND_PACING * (now - started)

    return QueuedSystemMetricsMonitor


def log_last_system_sample(monitor) -> int:
    """After monitor.finish(): one more sample, over the interval the monitor did not
    finish, logged now at its next step, with whatever is still queued. The interval's
    pending sample is dropped first: taken at the interval's start, it read CPU use since
    the sample before (or 0 at a run's first). Returns the points the server still did
    not take (lost with the trial's end)."""
    for m in monitor.monitors:
        m.clear_metrics()
    monitor.collect_metrics()
    pending = monitor.aggregate_metrics()
    if pending:
        monitor.publish_metrics(pending)
    return 0 if monitor.send() else len(monitor.unsent)


def system_steps_taken(monitor) -> int:
    """The step a monitor's next sample would take: its samples so far, resumed ones
    included."""
    return monitor._logging_step


# ----- Ray ----------------------------------------------------------------------------


def local_resources(num_cpus: int | None, num_gpus: int | None) -> tuple[float, float, float]:
    """(CPUs, GPUs, bytes of the memory resource) a local head node of Ray started with
    these would offer, worked out as Ray does without starting it."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    spec = ResourceAndLabelSpec(num_cpus=num_cpus, num_gpus=num_gpus).resolve(is_head=True)
    return float(spec.num_cpus or 0), float(spec.num_gpus or 0), float(spec.memory or 0)


KV_NAMESPACE = "rlpipe"


def kv_put(key: str, value: bytes) -> None:
    """Write `value` under `key` in the connected cluster's key-value store (the GCS's)."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def kv_get(key: str) -> bytes | None:
    """The value under `key` in the connected cluster's key-value store, or None."""
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key, namespace=KV_NAMESPACE)


def kv_delete(prefix: str) -> None:
    """Remove every key that starts with `prefix`."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(prefix, del_by_prefix=True, namespace=KV_NAMESPACE)


def pbt_schedule(policy_file: str) -> tuple[dict, list[tuple[int, dict]]]:
    """A PBT member's lineage as Tune's PopulationBasedTrainingReplay reads its
    pbt_policy_<trial>.txt: the first configuration, then (training_iteration, config)
    for each change (the replay's `config` is public, its `_policy` is not)."""
    from ray.tune.schedulers import PopulationBasedTrainingReplay

    replay = PopulationBasedTrainingReplay(policy_file)
    return dict(replay.config), [(int(at), dict(config)) for at, config in replay._policy]


def pbt_synchronous(scheduler) -> bool:
    """Whether a PBT or PB2 scheduler perturbs its members in lockstep (synch=True)."""
    return bool(scheduler._synch)


def pbt_last_train_time(scheduler, trial) -> float:
    """The time_attr of a member's last result, as PBT keeps it for choosing which member
    runs next (-inf before it reported)."""
    return float(scheduler._trial_state[trial].last_train_time)


def pbt_next_sync(scheduler) -> float:
    """The time_attr at which a synchronous PBT perturbs next."""
    return float(scheduler._next_perturbation_sync)


def repeater_group(repeater, trial_id: str):
    """The group of repeated trials a Tune Repeater keeps for one of its trials (None: not
    one of its trials)."""
    return repeater._trial_id_to_group.get(trial_id)


def repeater_group_trials(group) -> list[str]:
    """The trial ids of a Repeater's group, in the order it made them."""
    return list(group._trials)


def optuna_study(experiment_folder: str):
    """The optuna.Study of the OptunaSearch whose state Tune saved in a run's folder
    (searcher-state-<session>.pkl, the newest; Tune saves the innermost searcher, so the
    one inside a Repeater too): every trial Optuna asked for, with the value it was told.
    OptunaSearch keeps the study in _ot_study."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(experiment_folder)
    return searcher._ot_study


def tuner_scheduler(experiment_folder: str):
    """The trial scheduler a Tune run was given, as the Tuner pickled it into the run's
    folder when it was made (tuner.pkl, which Tuner.restore reads: its state before the
    run, under the key _tune_config)."""
    import pickle
    from pathlib import Path

    state = pickle.loads((Path(experiment_folder) / "tuner.pkl").read_bytes())
    return state["_tune_config"].scheduler
