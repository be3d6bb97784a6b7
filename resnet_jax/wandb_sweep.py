"""W&B Sweeps as a second launcher: the sweep YAML, and the entry point its agent runs.

Write the YAML (grid over a sweep config's runs, or a search space the config declares), create the
sweep, start agents (``--forward-signals``: a preempted agent run gets SIGTERM, saves and resumes):

    python -m resnet_jax.sweep wandb --output sweep.yaml configs/cifar10_degradation.py:quick
    python -m resnet_jax.sweep wandb --method random --output search.yaml configs/cifar10.py:depth=20

What an agent runs for one point (``${args}`` -> ``--run=plain-56``; you never type this):

    python -m resnet_jax.wandb_sweep --config=configs/cifar10_degradation.py:quick --workdir-root=runs/w --run=plain-56

Each agent argument ``--KEY=VALUE`` becomes ``--config.KEY=VALUE`` (``--run=NAME`` picks the sweep
config's run, as launch.sh does); the run's workdir is WORKDIR_ROOT/RUN[/KEY=VALUE,...], a function
of its parameters only, so the same point started again (a re-queued preempted run) resumes there.
Parameters are top-level config fields only: W&B would show a dotted one (``model.depth``) as a
second column next to the nested config (wandb issues #982, #5477).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Mapping, Sequence

import yaml

from resnet_jax import cli
from resnet_jax import sweep_configs

ENTRY = "resnet_jax.wandb_sweep"
METHODS = ("grid", "random", "bayes")
METRIC = {"name": "test/error", "goal": "minimize"}  # what random/bayes optimise (logged by every eval)
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


# ----------------------------------------------------------------------------- the YAML


def grid_parameters(spec: str) -> dict:
    """``run`` over a sweep config's runs (nothing for a one-run config)."""
    runs, is_sweep = sweep_configs.list_runs(spec)
    return {"run": {"values": [r.name for r in runs]}} if is_sweep else {}


def search_parameters(spec: str) -> dict:
    """The config module's SEARCH_SPACE: W&B parameter specs, e.g. ``{"learning_rate": {"values": [0.1, 0.05]}}``."""
    path, _ = sweep_configs.split_spec(spec)
    space = getattr(sweep_configs.load_module(path), "SEARCH_SPACE", None)
    if not space:
        raise sweep_configs.LaunchError(f"{path} declares no SEARCH_SPACE (e.g. SEARCH_SPACE = {{'learning_rate': "
                                "{'distribution': 'log_uniform_values', 'min': 0.01, 'max': 0.3}}); use --method grid")
    return dict(space)


def first_config(spec: str, overrides: Sequence[str] = ()):
    """The config of the sweep's first run with `overrides` (a bad override fails here, not in every agent run)."""
    runs, _ = sweep_configs.list_runs(spec)
    return sweep_configs.resolve_config(runs[0].config, overrides)


def check_parameters(config, parameters: Mapping[str, dict], overrides: Sequence[str] = ()) -> None:
    """Every parameter is ``run`` or a top-level field of the config (no dotted names), and no
    override fixes a field the sweep varies."""
    fixed = {o.partition("=")[0].removeprefix("--config.") for o in overrides}
    for key in parameters:
        if key in fixed:
            raise sweep_configs.LaunchError(f"--config.{key} is both a sweep parameter and an override; drop the override")
        if "." in key:
            raise sweep_configs.LaunchError(f"sweep parameter {key!r}: use top-level config fields only; W&B shows a dotted "
                                    "parameter as a second column beside the nested config (wandb #982/#5477)")
        if key != "run" and key not in config:
            raise sweep_configs.LaunchError(f"sweep parameter {key!r} is not a config field; "
                                    f"fields: {', '.join(sorted(config))}")


def sweep_name(spec: str, config) -> str:
    """The W&B group of a sweep config, else the run's name (as launch.sh names its directory)."""
    path, _ = sweep_configs.split_spec(spec)
    return config.wandb.get("group") or config.get("name") or os.path.splitext(os.path.basename(path))[0]


def sweep_spec(spec: str, method: str = "grid", workdir_root: str | None = None,
               overrides: Sequence[str] = ()) -> dict:
    """The sweep YAML as a dict: ``wandb sweep FILE`` reads it; its agents run ENTRY."""
    if method not in METHODS:
        raise sweep_configs.LaunchError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    config = first_config(spec, overrides)
    parameters = grid_parameters(spec)
    if method != "grid":
        parameters.update(search_parameters(spec))
    if not parameters:
        raise sweep_configs.LaunchError(f"{spec} is one run: a grid has nothing to sweep over; search its SEARCH_SPACE "
                                "with --method random or bayes, or give a sweep config")
    check_parameters(config, parameters, overrides)
    name = sweep_name(spec, config)
    root = workdir_root or os.path.join("runs", "wandb", name)
    return {
        "name": name,
        "project": config.wandb.project,  # the project main's wandb.init logs to: the sweep must live there
        **({"entity": config.wandb.entity} if config.wandb.get("entity") else {}),
        "program": "resnet_jax/wandb_sweep.py",
        "method": method,
        "metric": dict(METRIC),
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "-m", ENTRY, f"--config={spec}", f"--workdir-root={root}",
                    *overrides, "${args}"],
    }


def to_yaml(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------- the agent's run


def parse_agent_args(argv: Sequence[str]) -> tuple[str, str, list[str], dict[str, str]]:
    """(config spec, workdir root, baked --config.* overrides, the agent's KEY -> VALUE)."""
    spec, root, overrides, params = None, None, [], {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not (a.startswith("--") and sep):
            raise sweep_configs.LaunchError(f"argument {a!r}: expected --KEY=VALUE (what a W&B agent passes for ${{args}})")
        key = key[2:]
        if key == "config":
            spec = value
        elif key == "workdir-root":
            root = value
        elif key.startswith("config."):
            overrides.append(a)
        else:
            params[key] = value
    if not spec or not root:
        raise sweep_configs.LaunchError("--config=CONFIG and --workdir-root=DIR are required "
                                "(the sweep YAML's command has them)")
    return spec, root, overrides, params


def run_workdir(root: str, params: Mapping[str, str]) -> str:
    """WORKDIR_ROOT/RUN[/KEY=VALUE,...]: a function of the parameters only (sorted, path-safe)."""
    rest = ",".join(f"{k}={params[k]}" for k in sorted(params) if k != "run")
    parts = [p for p in (params.get("run"), _SAFE.sub("_", rest)) if p]
    return os.path.join(root, *parts)


def main_argv(spec: str, root: str, overrides: Sequence[str], params: Mapping[str, str]) -> list[str]:
    """The resnet_jax.main command line of one agent run."""
    if "run" in params:
        path, arg = sweep_configs.split_spec(spec)
        spec = f"{path}:{arg + ',' if arg else ''}run={params['run']}"
    flags = [f"--config.{k}={v}" for k, v in params.items() if k != "run"]
    return [sys.executable, "-m", "resnet_jax.main", f"--config={spec}", f"--workdir={run_workdir(root, params)}",
            *overrides, *flags]


def add_arguments(parser) -> None:
    """The options of ``python -m resnet_jax.sweep wandb``."""
    parser.add_argument("config", help="CONFIG_FILE[:ARGS]: a sweep config (grid over its runs) or one run")
    parser.add_argument("overrides", nargs="*", help="--config.FIELD=VALUE for every run (put them after --)")
    parser.add_argument("--method", choices=METHODS, default="grid",
                        help="grid: the config's runs; random/bayes: also its SEARCH_SPACE")
    parser.add_argument("--workdir", default=None, help="where agent runs live (default runs/wandb/<sweep name>)")
    parser.add_argument("--output", default=None, help="the YAML file to write (default: print it)")


def write(args) -> int:
    """``sweep wandb``: writes (or prints) the YAML and says how to start it."""
    try:
        config = sweep_spec(args.config, args.method, args.workdir, args.overrides)
    except sweep_configs.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = to_yaml(config)
    if not args.output:
        sys.stdout.write(text)
        return 0
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {args.output} ({config['method']}, {len(config['parameters'])} parameter(s)); start it with\n"
          f"  wandb sweep {args.output}\n  wandb agent --forward-signals ENTITY/PROJECT/SWEEP_ID")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in cli.HELP_FLAGS for a in argv):
        cli.parser(__doc__, prog=f"python -m {ENTRY}").print_help()
        return 0
    try:
        command = main_argv(*parse_agent_args(argv))
    except sweep_configs.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("W&B sweep run: " + shlex.join(command[1:]), flush=True)
    os.execv(command[0], command)  # main itself gets the agent's SIGTERM, saves and exits 143


if __name__ == "__main__":
    sys.exit(main())
