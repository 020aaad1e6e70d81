"""What the entry points share: Hydra's own command line (--cfg, --resolve, --package,
--info, -m, --shell-completion, --version), --help, and the exit codes.

The flags are parsed by Hydra's own argument parser and carried out by Hydra's own
`show_cfg` / `show_info` / `shell_completion`, on the config the entry point would run:
for a sweep, the fixed overrides with each dimension at its first value (the swept
dimensions are listed after it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from pipelines import private_api
from pipelines.config.compose import CONF_DIR, GROUPS, UserError, group_options

EXIT_OK, EXIT_BAD_INPUT = 0, 2
HYDRA_FLAGS = ("--cfg job|hydra|all", "--resolve", "--package/-p", "--info [what]",
               "-m/--multirun", "--shell-completion/-sc install=bash", "--version")


def usage(prog: str, summary: str, examples: list[str]) -> str:
    """The --help text: the entry point, its config groups and their options."""
    lines = [f"usage: python -m {prog} [hydra flags] [key=value | group=option ...]", "",
             summary, ""]
    lines.append("Config groups (group=option):")
    for group in GROUPS:
        lines.append(f"  {group:11} {', '.join(group_options(group))}")
    lines += ["", "Examples:"] + [f"  python -m {prog} {e}" for e in examples]
    lines += ["", f"Configs live in {CONF_DIR}.",
              "Hydra's flags: " + ", ".join(HYDRA_FLAGS) + ".",
              "--cfg job prints the composed config and runs nothing (--resolve resolves it);",
              "--info prints Hydra's defaults tree and search path."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = private_api.hydra_args_parser()
    parser.exit_on_error = False
    return parser


def _hydra():
    """Hydra's app object over conf/, as @hydra.main would make it."""
    return private_api.hydra_app(str(CONF_DIR), task_name="rlpipe")


def _shown_overrides(overrides: list[str], sweep: bool) -> tuple[list[str], str]:
    """The overrides whose config --cfg / --info show (validated first: bad input is
    exit 2), credentials out of the tracking URI, and a line naming the swept dimensions."""
    from pipelines.config.space import plan_sweep
    from pipelines.tracking.uri import redact_uri

    plan = plan_sweep(overrides, sweep_params=sweep)
    shown = [f"tracking.uri={redact_uri(o.split('=', 1)[1])}"
             if o.split("=", 1)[0] == "tracking.uri" else o
             for o in plan.fixed + [d.first() for d in plan.dims]]
    swept = " ".join(f"{d.key}={d.expression}" for d in plan.dims)
    return shown, (f"# swept: {swept}" if swept else "")


def _show(args: argparse.Namespace, sweep: bool) -> int:
    overrides, swept = _shown_overrides(args.overrides, sweep)
    hydra = _hydra()
    if args.cfg:
        hydra.show_cfg(config_name="config", overrides=overrides, cfg_type=args.cfg,
                       package=args.package, resolve=args.resolve)
    else:
        hydra.show_info(args.info, config_name="config", overrides=overrides)
    if swept:
        print(swept)
    return EXIT_OK


def run_main(
    prog: str, summary: str, examples: list[str], body: Callable[[list[str]], int],
    argv: list[str] | None = None, multirun: Callable[[list[str]], int] | None = None,
) -> int:
    """Run `body(overrides)` (or `multirun(overrides)` with -m); a UserError becomes one
    line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # MLflow's client prints two links at each run's end on a server: ours says where.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        try:
            args, unknown = _parser().parse_known_args(argv)
        except argparse.ArgumentError as e:
            raise UserError(f"{e.argument_name}: {e.message}") from None
        if unknown:
            raise UserError(f"{unknown[0]}: unknown flag; allowed: --help, "
                            + ", ".join(HYDRA_FLAGS))
        if args.help or args.hydra_help:
            print(usage(prog, summary, examples))
            return EXIT_OK
        if args.shell_completion:
            _hydra().shell_completion(config_name="config", overrides=args.overrides)
            return EXIT_OK
        if args.config_path or args.config_name or args.config_dir or args.experimental_rerun:
            raise UserError("--config-path/--config-name/--config-dir/--experimental-rerun: "
                            f"not used here; the configs are {CONF_DIR}")
        if args.cfg or args.info:
            return _show(args, sweep=prog.endswith("sweep") or args.multirun)
        if args.resolve or args.package:
            raise UserError("--resolve and --package go with --cfg")
        if args.multirun:
            if multirun is None:
                raise UserError(f"-m/--multirun: {prog} runs one job; sweeps run with "
                                "python -m pipelines.sweep")
            return multirun(args.overrides)
        return body(args.overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def exit_with(code: int) -> None:
    """End the process with `code`, skipping the interpreter's teardown (about a second
    with PyTorch, Ray and MLflow loaded, 3% of a short sweep) when nothing is left to it:
    output flushed, logging shut down, no Ray connected (else a normal exit, whose handlers
    stop Ray). Every entry point's own process ends here."""
    sys.stdout.flush()
    sys.stderr.flush()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        sys.exit(code)
    logging.shutdown()
    os._exit(code)
