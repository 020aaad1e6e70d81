"""What the three entry points share: argument handling, --help, --cfg, exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import yaml

from pipelines.config import CONF_DIR, GROUPS, UserError, group_options

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def usage(prog: str, summary: str, examples: list[str]) -> str:
    """The --help text: the entry point, its config groups and their options."""
    lines = [f"usage: python -m {prog} [--cfg] [key=value | group=option ...]", "", summary, ""]
    lines.append("Config groups (group=option):")
    for group in GROUPS:
        lines.append(f"  {group:11} {', '.join(group_options(group))}")
    lines += ["", "Examples:"] + [f"  python -m {prog} {e}" for e in examples]
    lines += ["", f"Configs live in {CONF_DIR}; --cfg prints the composed config and exits."]
    return "\n".join(lines)


def run_main(
    prog: str, summary: str, examples: list[str], body: Callable[[list[str]], int],
    argv: list[str] | None = None,
) -> int:
    """Run `body(overrides)`; a UserError becomes one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage(prog, summary, examples))
        return EXIT_OK
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        if "--cfg" in args:
            from pipelines.space import plan_sweep
            from pipelines.tracking import redact_uri

            plan = plan_sweep([a for a in args if a != "--cfg"],
                              sweep_params=prog.endswith("sweep"))
            tracking = plan.base.container["tracking"]
            tracking["uri"] = redact_uri(tracking["uri"])
            print(yaml.safe_dump(plan.base.container, sort_keys=False))
            if plan.dims:
                print("# swept: " + " ".join(f"{d.key}={d.expression}" for d in plan.dims))
            return EXIT_OK
        unknown = [a for a in args if a.startswith("-")]
        if unknown:
            raise UserError(f"{unknown[0]}: unknown flag; allowed: --help, --cfg")
        return body(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
