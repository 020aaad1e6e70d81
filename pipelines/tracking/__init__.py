"""MLflow: runs found again by their key and written in time-stamped batches, the names of
the series the pipelines log, tracking URIs, agents as models and the registry, PBT's
lineage on a member's run, system metrics and videos."""
