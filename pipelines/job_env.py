"""The runtime env of a sweep submitted as a Ray Job from a checkout, as the JSON that
`ray job submit --runtime-env-json` takes: what the shipped code leaves out (history,
environments, results, stores) and the checkout's commit, which the job's runs record (its
working dir arrives without .git to read it from).

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json "$(python -m pipelines.job_env)" -- python -m pipelines.sweep ...
"""

from __future__ import annotations

import json
import sys

from pipelines.cli import EXIT_BAD_INPUT, EXIT_OK
from pipelines.cluster.connect import job_runtime_env


def main(argv: list[str]) -> int:
    if argv in (["--help"], ["-h"]):
        print(__doc__.strip())
        return EXIT_OK
    if argv:
        print(f"error: {argv[0]}: takes no arguments; allowed: --help", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(job_runtime_env()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
