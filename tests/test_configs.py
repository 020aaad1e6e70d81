"""conf/ against its schemas, in-process: every option of every group and every experiment
composes, every key it writes is a field of its schema, and a group's option names only
what differs from the schema's defaults (each default lives once, in the dataclass).
docs/configs.md's table of what each experiment pins is held to the files, both ways, and
no comment in conf/ quotes a measured figure (the figures live in benchmarks/results/)."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path

import pytest
import yaml

from algos.registry import ALGORITHMS
from pipelines.config import schema
from pipelines.config.compose import CONF_DIR, GROUPS, group_options
from pipelines.config.compose import compose_config as compose_uncached
from pipelines.config.space import plan_sweep


@functools.cache
def _composed(overrides: tuple[str, ...]):
    return compose_uncached(list(overrides))


def compose_config(overrides: list[str]):
    """compose_config, once per set of overrides in this module (the tests only read)."""
    return _composed(tuple(overrides))


NEEDS = {("cluster", "remote"): ["cluster.address=127.0.0.1:6379"]}
"""What an option needs beside it to compose (a remote cluster's address)."""
GROUP_SCHEMA = {"env": schema.EnvConfig, "tracking": schema.TrackingConfig,
                "cluster": schema.ClusterConfig, "sweep": schema.SweepConfig}
IDENTITY = {"id", "kind"}
"""Keys an option names even when they equal a default: which env it is."""


def options() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in group_options(g)]


def config_files() -> list[Path]:
    return sorted(CONF_DIR.rglob("*.yaml"))


def schema_of(path: Path) -> type:
    """The dataclass a conf/ file is checked against."""
    group = path.relative_to(CONF_DIR).parts[0]
    if group == "algo":
        composed = compose_config([f"algo={path.stem}"])
        return type(composed.cfg.algo)
    if group in ("experiment", "config.yaml"):
        return schema.PipelineConfig
    return GROUP_SCHEMA[group]


def experiment_algo(path: Path, data: dict) -> type:
    """The config class of the algorithm an experiment file chooses: its own
    `override /algo`, else (it inherits one) the composed experiment's."""
    for entry in data.get("defaults", []):
        if isinstance(entry, dict) and "override /algo" in entry:
            return type(compose_config([f"algo={entry['override /algo']}"]).cfg.algo)
    option = str(path.relative_to(CONF_DIR / "experiment").with_suffix(""))
    return type(compose_config([f"experiment={option}"]).cfg.algo)


def field_types(cls: type) -> dict[str, typing.Any]:
    """A dataclass's fields and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_keys(data: dict, cls: type, where: str, algo_cls: type | None) -> list[str]:
    """Keys of `data` (nested) that are not fields of `cls`; PipelineConfig's algo is
    checked against `algo_cls`."""
    out = []
    types = field_types(cls)
    for key, value in data.items():
        if key == "defaults":
            continue
        if key not in types:
            out.append(f"{where}{key}")
            continue
        sub = algo_cls if (cls is schema.PipelineConfig and key == "algo") else types[key]
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            out += unknown_keys(value, sub, f"{where}{key}.", algo_cls)
    return out


@pytest.mark.parametrize("group,option", options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_option_of_every_group_composes(group, option):
    composed = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert composed.choices[group] == option


@pytest.mark.parametrize("option", group_options("sweep"))
def test_every_sweep_file_plans_and_validates_its_trials(option):
    plan = plan_sweep([f"sweep={option}"])
    assert plan.dims and plan.trials


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_key_of_conf_is_a_field_of_its_schema(path):
    data = yaml.safe_load(path.read_text()) or {}
    group = path.relative_to(CONF_DIR).parts[0]
    algo_cls = None
    if group == "experiment":
        algo_cls = experiment_algo(path, data)
    cls = schema_of(path)
    if group == "sweep":  # params are overrides, checked when a sweep plans (above)
        data = {k: v for k, v in data.items() if k != "params"}
    assert unknown_keys(data, cls, "", algo_cls) == []


@pytest.mark.parametrize("path", [p for p in config_files() if p.parent.name in (
    "algo", "env", "tracking", "cluster")], ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_a_group_option_names_only_what_differs_from_the_defaults(path):
    data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items()
            if k != "defaults" and k not in IDENTITY}
    cls = schema_of(path)
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                         else f.default) for f in dataclasses.fields(cls)}
    restated = {k: v for k, v in data.items() if defaults.get(k, object()) == v}
    assert restated == {}, f"{path.name} restates defaults of {cls.__name__}: {restated}"


def test_every_algorithm_has_its_option_and_experiments_name_real_ones():
    assert set(ALGORITHMS) <= set(group_options("algo"))
    for option in group_options("experiment"):
        composed = compose_config([f"experiment={option}"])
        assert composed.cfg.algo.name in ALGORITHMS
        assert composed.choices["env"] in group_options("env")


def test_pong_and_breakout_share_one_base_and_differ_only_in_the_game():
    pong = compose_config(["experiment=pong_dqn"]).container
    breakout = compose_config(["experiment=breakout_dqn"]).container
    assert pong["algo"] == breakout["algo"]
    assert {k: v for k, v in pong["env"].items() if k != "id"} == {
        k: v for k, v in breakout["env"].items() if k != "id"}
    assert (pong["env"]["id"], breakout["env"]["id"]) == ("ALE/Pong-v5", "ALE/Breakout-v5")


def test_mc_vs_td_pairs_each_env_with_the_same_budget_and_evaluation_seeds():
    # Monte Carlo's experiments change how it learns, never what it is measured on.
    plan = plan_sweep(["sweep=mc_vs_td"])
    assert plan.size == 30 and len(plan.trials) == 30
    by_env: dict[str, dict[str, object]] = {}
    for _, composed in plan.trials:
        cfg = composed.cfg
        measured = (cfg.algo.episodes, cfg.algo.gamma, cfg.algo.max_steps,
                    tuple(cfg.algo.evaluation_seeds()), cfg.env)
        by_env.setdefault(composed.choices["env"], {}).setdefault(cfg.algo.name, measured)
        assert by_env[composed.choices["env"]][cfg.algo.name] == measured
    assert set(by_env) == {"frozenlake", "frozenlake_slippery", "taxi"}
    for env, algos in by_env.items():
        assert algos["q_learning"] == algos["monte_carlo"], env


# What an experiment pins: docs/configs.md's table against conf/experiment/.

DOCS_CONFIGS = Path(__file__).resolve().parent.parent / "docs" / "configs.md"
PINS_SECTION = "## What an experiment pins"
NO_VALUE = object()
"""A key a row names without its value (allowed for a list the file writes out)."""


def experiment_files() -> dict[str, Path]:
    """Every experiment option and every base file an experiment inherits, by the name an
    override gives it (`cartpole_dqn`, `base/cleanrl_dqn_atari`)."""
    root = CONF_DIR / "experiment"
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


@dataclasses.dataclass
class Pins:
    values: dict[str, typing.Any]
    """Dotted key (`algo.lr`), or a group (`algo`) for the option it picks: its value."""
    parents: list[str]
    """The experiments it inherits."""


def flatten(data: dict, prefix: str = "") -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def file_pins(path: Path) -> Pins:
    """What an experiment file sets itself: its keys, the options its defaults list picks
    (`override /algo: dqn` -> algo=dqn) and the experiments it names there (its parents)."""
    data = yaml.safe_load(path.read_text()) or {}
    values, parents = {}, []
    for entry in data.pop("defaults", []):
        if isinstance(entry, dict):
            for key, option in entry.items():
                values[key.removeprefix("override ").lstrip("/")] = option
        elif entry != "_self_":
            parents.append(entry)
    values.update(flatten(data))
    return Pins(values, parents)


def doc_value(text: str) -> typing.Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # 1e-3, which YAML 1.1 reads as a string
        except ValueError:
            pass
    return value


def docs_table() -> dict[str, tuple[Pins, str]]:
    """The rows of docs/configs.md's "What an experiment pins" table: the experiment, what
    its "pins" cell lists (`key=value`, `key`, "inherits `parent`") and the whole row."""
    section = DOCS_CONFIGS.read_text().split(PINS_SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, f"a row of 4 cells: {line}"
        name, pins_cell = cells[0].strip("`"), cells[2]
        parents = re.findall(r"inherits `([^`]+)`", pins_cell)
        values: dict[str, typing.Any] = {}
        for span in re.findall(r"`([^`]+)`", re.sub(r"inherits `[^`]+`", "", pins_cell)):
            key, eq, value = span.partition("=")
            assert key not in values, f"{name}: {key} listed twice"
            values[key] = doc_value(value) if eq else NO_VALUE
        assert name not in table, f"two rows for {name}"
        table[name] = (Pins(values, parents), line)
    return table


def compose_experiment(name: str):
    """An experiment composed as `experiment=<name>`; a base names no game, so it is
    composed with the env of an experiment that inherits it."""
    overrides = [f"experiment={name}"]
    if name.startswith("base/"):
        child = next(n for n, p in experiment_files().items() if name in file_pins(p).parents)
        overrides.append(f"env={compose_config([f'experiment={child}']).choices['env']}")
    return compose_config(overrides)


def row_of(name: str) -> tuple[Pins, str]:
    table = docs_table()
    assert name in table, f"no row for {name} in {DOCS_CONFIGS.name}'s {PINS_SECTION!r}"
    return table[name]


def test_every_experiment_has_one_row_in_the_docs_table():
    assert set(group_options("experiment")) <= set(experiment_files())
    rows, files = set(docs_table()), set(experiment_files())
    assert (sorted(files - rows), sorted(rows - files)) == ([], []), "(no row, no file)"


@pytest.mark.parametrize("name", list(experiment_files()))
def test_the_docs_table_lists_exactly_the_keys_the_experiment_file_sets(name):
    listed, row = row_of(name)
    own = file_pins(experiment_files()[name])
    assert listed.parents == own.parents, row
    assert sorted(listed.values) == sorted(own.values), row
    for key, value in listed.values.items():
        if value is NO_VALUE:  # a long list, described in words
            assert isinstance(own.values[key], list), f"{name}: give {key}'s value"


@pytest.mark.parametrize("name", list(experiment_files()))
def test_every_value_the_docs_table_lists_is_the_composed_value(name):
    listed, _ = row_of(name)
    composed = compose_experiment(name)
    flat = flatten(composed.container)
    for key, value in listed.values.items():
        actual = composed.choices[key] if key in GROUPS else flat[key]
        if value is not NO_VALUE:
            assert actual == value, f"{name}: the docs say {key}={value}, the config {actual}"


# No comment in conf/ quotes a measured figure.

FIGURE = r"(?<![\w.,\-/])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e-?\d+)?x?(?![\w/])"
"""A number: 7, 4,500, 0.752, -99, 1e-3, 10x. Not digits inside a name (v5, 84x84, H200),
nor the second number of a range or fraction (0-4, 4,500-4,900, 1/3)."""
MEASUREMENT = re.compile(
    r"%|\bpercent\b|\bscor(?:e|es|ed)\b|\bsuccess(?:es|ful)?\b|\bsucceed(?:s|ed)?\b|\bIQM\b"
    r"|\bmean\b|\bmedian\b|\baverag(?:e|es|ed)\b|\bstd\b|\breturns?\s+(?:of|over|on)\b"
    r"|\breach(?:es|ed)\b|\bend(?:s|ed)?\s+at\b|\bpeak(?:s|ed)?\b|\bmeasur\w*"
    r"|\b[\w-]+/s\b|\bper\s+second\b|\bseconds?\b|\bminutes?\b|\bhours?\b"
    r"|\bfaster\b|\bslower\b|\bspeed-?up\b|\bthroughput\b",
    re.IGNORECASE)
NEAR = 2
"""Words at most between a measurement word and a number for the pair to be a figure."""
FIGURE_LIST = re.compile(rf"{FIGURE}(?:,\s+{FIGURE}){{3,}}")
SCHEDULE = re.compile(r"\b(?:every|each)\s+$", re.IGNORECASE)


def measured_figures(text: str) -> list[str]:
    """The measured figures a comment quotes. The rule:

    - a number with a word of measurement at most NEAR (2) words before or after it: a
      score or success (score, success, succeeds, IQM, mean, median, average, std, returns
      of/on/over seeds, reached, ended at, peak), a speed or a duration (steps/s or any
      `<unit>/s`, per second, seconds, minutes, hours, faster, slower, speed-up,
      throughput), a percentage (`%`, percent) or the word measured itself;
    - or four or more numbers in a comma-separated run (one figure per seed: 500, 405.6,
      500, 500).

    A number right after "every" or "each" is a schedule (every 30 seconds), not a figure.
    Settings stay writable as what they are: `lr 1e-3 (Zoo 2.3e-3)`, `80,000 steps`,
    `final epsilon 0.01`, `over a tenth of training` (never a percentage); a figure itself
    goes to benchmarks/results/*.json, and the comment names that file.
    """
    numbers = [m for m in re.finditer(FIGURE, text) if not SCHEDULE.search(text[:m.start()])]
    found = []
    for word in MEASUREMENT.finditer(text):
        for number in numbers:
            if number.start() >= word.end():
                between = text[word.end():number.start()]
            elif number.end() <= word.start():
                between = text[number.end():word.start()]
            else:
                between = ""
            if len(between.split()) <= NEAR:
                lo, hi = min(word.start(), number.start()), max(word.end(), number.end())
                found.append(text[lo:hi])
    found += [m.group(0) for m in FIGURE_LIST.finditer(text)]
    return found


def comments(text: str) -> list[tuple[int, str]]:
    """A yaml file's comments with their first line: each block of consecutive comment
    lines joined into one text (a figure may straddle a line break), and each comment that
    follows a value on its line."""
    out: list[tuple[int, str]] = []
    block: list[str] = []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped[1:].strip())
            continue
        if block:
            out.append((number - len(block), " ".join(block)))
            block = []
        trailing = re.search(r"\s#(.*)$", line)
        if trailing:
            out.append((number, trailing.group(1).strip()))
    return out


MEASURED_LINES = [  # comments of conf/ before the figures moved to benchmarks/results/
    "(12 configurations x 2 seeds; this one ranked first, success 0.752 IQM on these 1,000",
    "succeeds 75.5% of the time on these seeds (python -m benchmarks.tabular_optimum): the",
    "lake is often lost whatever one does. gamma 0.99, not the course's 0.95: with 0.95 the"
    " best configuration reached 0.739, and even the optimal policy of that discount",
    "first-visit updates with a step size of 0.01: success 0.738 on both seeds (the optimal",
    "policy: 0.755 on these seeds). Every-visit updates ended at 0.02-0.43: a pair visited",
    "(0.01, 0.05, 0.1, first- and every-visit) ended at 1.0 on both seeds; with the course's",
    "(mean return 6.4 and 4.7 on seeds 0 and 1; the optimal policy: 7.56). With the course's",
    "the final eval/score of seeds 0-4 was 161.9, 147.9, 500, 500, 500 (peaks of 500 on",
    "every seed); with the decay alone 391, 346, 500, 500, 500; with both 500, 405.6, 500,",
    "(6 workers of 8 envs acting on their CPUs: about 4,500-4,900 env steps/s).",
    "to lr_end (0) from whatever value explore sets. About 10 minutes on 2 cores.",
    "Taxi, two learning rates, two seeds: 8 trials, about half a minute on 2 cores after the",
    "where the optimal policy succeeds 75.5% of the time (python -m benchmarks.tabular_optimum)",
    "steps, epsilon to 0.01 over 10% of training, clipped rewards; its envs: no sticky",
]
SETTING_LINES = [  # settings, which a comment may state
    "lr 1e-3 (Zoo 2.3e-3) decaying linearly to 0 (Zoo: constant), 64 gradient steps per 256",
    "env steps (Zoo 128), final epsilon 0.01 (Zoo 0.04), 80,000 steps (Zoo 50,000). Why, and",
    "episodes, ranked by the success rate (eval/mean_return) on 1,000 evaluation seeds.",
    "(0.01, 0.05, 0.1, first- and every-visit) solved the lake on both seeds; with the",
    "steps, epsilon to 0.01 over a tenth of training, clipped rewards; its envs: no sticky",
    "Every 10,000 env steps (two evaluations) the bottom quarter copies a top-quarter",
    "REINFORCE on Acrobot-v1: the course's CartPole settings, with a discount (returns are",
    "-1 a step until the swing-up) and a wider policy.",
    "Acrobot-v1: 6 floats, 3 actions, -1 a step until the tip swings up (500 steps max).",
    "ALE/Pong-v5 with the DQN preprocessing (frame skip 4, 84x84 grayscale, 4 stacked frames,",
    "the intended move happens with probability 1/3; the course's 100 evaluation seeds",
    "Seed of the run: a checkpoint every 30 seconds at most (cluster.checkpoint_every_s).",
    "sizes follow the H200 runs of python -m benchmarks.pong_dqn_throughput with 6 workers",
]


@pytest.mark.parametrize("line", MEASURED_LINES)
def test_the_rule_catches_a_measured_figure(line):
    assert measured_figures(line), line


@pytest.mark.parametrize("line", SETTING_LINES)
def test_the_rule_lets_a_setting_pass(line):
    assert measured_figures(line) == [], line


def test_a_figure_split_over_comment_lines_or_after_a_value_is_caught():
    text = ("# Taxi, two learning rates, two seeds: 8 trials, about half a minute on\n"
            "# 2 cores after the install.\n"
            "params:\n"
            "  seed: range(0,2)  # the best seed's score was 7.9\n")
    assert [(line, measured_figures(comment)) for line, comment in comments(text)] == [
        (1, ["minute on 2"]), (4, ["score was 7.9"])]


def test_no_comment_in_conf_quotes_a_measured_figure():
    found = [f"{path.relative_to(CONF_DIR)}:{number}: {figure!r}"
             for path in config_files()
             for number, text in comments(path.read_text())
             for figure in measured_figures(text)]
    assert found == [], ("name the results file that holds the figure instead: "
                         + "; ".join(found))
