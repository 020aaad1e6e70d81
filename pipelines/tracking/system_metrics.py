"""MLflow's system metrics (CPU, memory, disk, network, and GPU utilization and memory
where NVML sees a GPU) on a trial's run, as `system/*` series: never two points at one
step, a restarted trial's continuing after its run's last one, and what a tracking
server did not take sent again with the next sample (private_api.system_metrics_monitor)."""

from __future__ import annotations

import logging

from pipelines import private_api
from pipelines.tracking.run_logger import RunLogger

log = logging.getLogger("rlpipe")


def start_system_metrics(logger: RunLogger, every_s: float, resume: bool = False):
    """MLflow's system-metrics monitor on the run, sampled every `every_s` seconds, its
    steps continued after the run's last system/* step when `resume` (a run that existed
    before: a retried, resumed or restarted trial); None when every_s is 0."""
    if not every_s:
        return None
    import psutil

    # Its start, stop and "no GPU" lines are INFO: keep the trial's log for what matters.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # psutil measures CPU use per calling thread, since that thread's previous call: start
    # the clock of this thread, which takes the last sample (stop_system_metrics).
    psutil.cpu_percent()
    monitor = private_api.system_metrics_monitor(logger.run_id, every_s, resume, logger.uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop the monitor, then log one last sample over its unfinished interval, so that a
    run shorter than one interval still has a point (call it before the run is marked
    finished: the monitor logs only into a RUNNING run), from the thread that started it."""
    if monitor is None:
        return
    monitor.finish()
    try:
        unsent = private_api.log_last_system_sample(monitor)
    except Exception as e:  # a missing last sample must not fail a finished trial
        log.warning("last system-metrics sample not logged: %s", e)
        return
    if unsent:
        log.warning("%d system-metrics points not logged: the tracking server did not take "
                    "them before the run's end", unsent)
