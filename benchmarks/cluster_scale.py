"""Trials per minute of a sweep on one Ray node and on two, both started on this machine
with `ray start` (token authentication on), one CPU each.

32 Q-learning trials on Taxi with the course's settings (seeds 0..31, a few seconds each)
through the real command line, `cluster=remote` joining the cluster, the code shipped with
Ray's runtime environment, MLflow in a sqlite file. A node is one Ray raylet with its
workers; on this 2-core machine both nodes, the head's processes and the driver share the
cores, so two nodes cannot reach twice one. Also recorded, for docs/cluster.md's scale section:
the driver's peak memory and what MLflow stores per trial.
Usage: python -m benchmarks.cluster_scale [--trials 32] [--episodes 25000]
"""

from __future__ import annotations

import argparse

from benchmarks.common import run_sweep, table, write
from tests.ray_cluster import LocalCluster


def measure(nodes: int, trials: int, episodes: int) -> dict:
    """One sweep on a fresh cluster of `nodes` one-CPU nodes."""
    with LocalCluster(head_cpus=1) as cluster:
        for i in range(1, nodes):
            cluster.add_node(f"node{i}", num_cpus=1)
        m = run_sweep([
            "experiment=taxi_course", f"algo.episodes={episodes}", f"seed=range(0,{trials})",
            "cluster=remote", f"cluster.address={cluster.address}",
        ], env=cluster.env)
    m["trials_per_min"] = m["trials"] / (m["fit_s"] / 60)
    m["trials_per_min_command"] = m["trials"] / (m["command_s"] / 60)
    return m


def main() -> None:
    """Measure, print the table, write results/cluster_scale.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--episodes", type=int, default=25_000)
    args = parser.parse_args()
    data, rows = {"trials": args.trials, "episodes": args.episodes}, []
    for nodes in (1, 2):
        m = measure(nodes, args.trials, args.episodes)
        data[f"nodes_{nodes}"] = m
        rows.append([nodes, m["nodes"], m["fit_s"], m["trials_per_min"], m["command_s"],
                     m["trials_per_min_command"], m["driver_peak_rss_mb"] or "-"])
    one, two = data["nodes_1"], data["nodes_2"]
    data["ratio"] = two["trials_per_min"] / one["trials_per_min"]
    rows.append(["ratio 2/1", "", "", data["ratio"], "",
                 two["trials_per_min_command"] / one["trials_per_min_command"], ""])
    print(f"{args.trials} Taxi trials ({args.episodes:,} episodes each), nodes of 1 CPU")
    print(table(["nodes", "nodes used", "Tune seconds", "trials/min", "command seconds",
                 "trials/min (command)", "driver peak MB"], rows))
    per = {k: round(one[k], 1) for k in ("metrics_per_trial", "params_per_trial",
                                          "tags_per_trial")}
    print(f"MLflow per trial: {per}; store {one['store_mb']:.1f} MB for {one['trials']} trials")
    print(f"written to {write('cluster_scale', data)}")


if __name__ == "__main__":
    main()
