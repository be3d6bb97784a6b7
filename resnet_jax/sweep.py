"""The logic behind ``launch.sh``: which runs a config launches, where, on which GPUs, and which
of them are already finished.

``launch.sh`` stays a thin bash layer (argument parsing, the virtual environment, starting
processes); everything it decides comes from here, so it can be tested without a shell:

    python -m resnet_jax.sweep list configs/cifar10_degradation.py:quick
    python -m resnet_jax.sweep status runs/cifar10-degradation-quick/plain-56
    python -m resnet_jax.sweep plan --workdir /tmp/w configs/cifar10_degradation.py:quick -- --config.num_train_steps=100
    python -m resnet_jax.sweep sbatch --python .venv/bin/python -- configs/cifar10_degradation.py
    python -m resnet_jax.sweep wandb --output sweep.yaml configs/cifar10_degradation.py:quick

A config module that defines ``get_sweep(arg) -> list[str]`` is a sweep: each of its runs is
``CONFIG:ARG,run=NAME`` in ``WORKDIR/NAME``. Any other config is one run in ``WORKDIR`` itself.

A run is *finished* when its latest checkpoint step is at least the ``num_train_steps`` it will be
launched with (the config with this launch's overrides, so raising ``num_train_steps`` turns a
finished run into a resumable one); without checkpoints, the last step of its metrics.jsonl
counts instead. This module must stay light: no jax, no TensorFlow.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Sequence

from resnet_jax import cli
from resnet_jax import run_dir
from resnet_jax import wandb_sweep
from resnet_jax.sweep_configs import LaunchError, list_runs, load_module, resolve_config, split_spec


# ----------------------------------------------------------------------------- run state


def saved_num_train_steps(workdir: str) -> int | None:
    try:
        return int((run_dir.read_config(workdir) or {})["num_train_steps"])
    except (run_dir.RunDirError, KeyError, TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class RunStatus:
    state: str            # new | partial | finished | restart
    done: int             # the latest checkpoint's step (for a finished run without checkpoints: metrics.jsonl's)
    total: int | None     # num_train_steps it is (or was) launched with

    def describe(self) -> str:
        total = "?" if self.total is None else self.total
        return {"new": "new",
                "partial": f"resume from step {self.done}/{total}",
                "finished": f"finished ({self.done}/{total} steps)",
                "restart": f"restart from scratch (resume=false; {self.done}/{total} steps there)"}[self.state]


def run_status(workdir: str, num_train_steps: int | None = None, resume: bool = True) -> RunStatus:
    """Where a run stands. `num_train_steps` is the length it will be launched with (default: the
    one saved in WORKDIR/config.json)."""
    total = num_train_steps if num_train_steps is not None else saved_num_train_steps(workdir)
    steps = run_dir.checkpoint_steps(workdir)
    if not steps:
        # No checkpoint (never saved, or deleted to save space): finished if its metrics say so;
        # otherwise the run starts over, since there is nothing to resume from.
        logged = run_dir.last_metrics_step(workdir) or 0
        if resume and logged and total is not None and logged >= total:
            return RunStatus("finished", logged, total)
        return RunStatus("new", 0, total)
    done = steps[-1]
    if not resume:
        return RunStatus("restart", done, total)
    if total is not None and done >= total:
        return RunStatus("finished", done, total)
    return RunStatus("partial", done, total)


# ----------------------------------------------------------------------------- devices


def parse_gpus(text: str | None) -> list[str]:
    """``"0,1,2,3"`` -> ``["0", "1", "2", "3"]``; ``""`` or ``"none"`` -> no GPUs."""
    if text is None or text.strip().lower() in ("", "none"):
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"GPU list {text!r} names a GPU twice")
    return gpus


def assign_slots(num_runs: int, gpus: Sequence[str], parallel: int | None = None,
                 data_parallel: bool = False, runs_per_gpu: int = 1) -> list[tuple[int, str]]:
    """(slot, CUDA_VISIBLE_DEVICES or '') for each of `num_runs` runs, in launch order.

    A slot runs its runs one after another; slots run side by side. Without GPUs: `parallel` slots
    (default 1, i.e. sequential). With several GPUs: one run per GPU by default; `data_parallel`
    gives every GPU to one run at a time; `parallel` N splits the GPUs into N equal groups. With
    fewer runs than slots the GPUs are shared out over the runs there are. `runs_per_gpu` K packs
    K slots onto each GPU group (small CIFAR nets do not fill a modern GPU): slot s uses group
    s mod (number of groups), so runs fill every GPU once before any GPU gets a second one. Runs
    go to slots round robin, so the assignment (and the dry run) is deterministic.
    """
    if parallel is not None and parallel < 1:
        raise LaunchError(f"--parallel must be at least 1, got {parallel}")
    if data_parallel and parallel not in (None, 1):
        raise LaunchError("--data-parallel gives all GPUs to one run at a time; it cannot go with --parallel")
    if runs_per_gpu < 1:
        raise LaunchError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    if runs_per_gpu > 1 and not gpus:
        raise LaunchError("--runs-per-gpu shares GPUs between runs, and this host has none (--gpus/"
                          "CUDA_VISIBLE_DEVICES); on CPUs use --parallel N")
    if num_runs == 0:
        return []
    gpus = list(gpus)
    if data_parallel:
        slots = 1
    elif parallel is not None:
        slots = parallel
    else:
        slots = max(len(gpus), 1)
    if gpus and slots > len(gpus):
        raise LaunchError(f"--parallel {slots} needs at least {slots} GPUs; this host has {len(gpus)} "
                          f"({','.join(gpus)})")
    if runs_per_gpu > 1:
        per = len(gpus) // slots
        groups = [",".join(gpus[k * per:(k + 1) * per]) for k in range(slots)]
        packed = min(slots * runs_per_gpu, num_runs)
        return [(i % packed, groups[(i % packed) % slots]) for i in range(num_runs)]
    slots = min(slots, num_runs)
    per = len(gpus) // slots if gpus else 0
    groups = [",".join(gpus[k * per:(k + 1) * per]) for k in range(slots)]
    return [(i % slots, groups[i % slots]) for i in range(num_runs)]


def memory_fraction(runs_per_gpu: int) -> str:
    """XLA_PYTHON_CLIENT_MEM_FRACTION for each of K runs sharing a GPU ('' for K = 1: JAX's default).

    Together the K runs may use 90% of the GPU's memory; each grows on demand up to its share
    (XLA_PYTHON_CLIENT_PREALLOCATE=false), so none can starve the others.
    """
    if runs_per_gpu <= 1:
        return ""
    return f"{int(90 / runs_per_gpu) / 100:.2f}"


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class PlannedRun:
    name: str
    config: str
    workdir: str
    status: RunStatus
    slot: int = -1        # -1: not launched (finished)
    gpus: str = ""
    mem_fraction: str = ""  # XLA_PYTHON_CLIENT_MEM_FRACTION when runs share a GPU ('' = JAX's default)


@dataclasses.dataclass
class Plan:
    sweep_name: str
    is_sweep: bool
    workdir: str
    runs: list[PlannedRun]
    num_slots: int

    @property
    def to_launch(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status.state != "finished"]


def default_workdir(name: str) -> str:
    return os.path.join("runs", name)


def make_plan(spec: str, workdir: str | None = None, overrides: Sequence[str] = (), gpus: Sequence[str] = (),
              parallel: int | None = None, data_parallel: bool = False, runs_per_gpu: int = 1) -> Plan:
    """Resolves every run of `spec` with `overrides` (so a bad override fails before anything runs)
    and decides which to launch, where, and on which slot and GPUs."""
    runs, is_sweep = list_runs(spec)
    configs = [resolve_config(r.config, overrides) for r in runs]
    path, _ = split_spec(spec)
    stem = os.path.splitext(os.path.basename(path))[0]
    if is_sweep:
        module = load_module(path)
        name = configs[0].get("wandb", {}).get("group") or getattr(module, "SWEEP_NAME", None) or stem
    else:
        name = configs[0].get("name") or stem
    workdir = workdir or default_workdir(name)
    planned = []
    for run, config in zip(runs, configs):
        directory = os.path.join(workdir, run.name) if run.subdir else workdir
        status = run_status(directory, int(config.num_train_steps), bool(config.get("resume", True)))
        planned.append(PlannedRun(run.name or config.get("name") or stem, run.config, directory, status))
    launch = [r for r in planned if r.status.state != "finished"]
    slots = assign_slots(len(launch), gpus, parallel, data_parallel, runs_per_gpu)
    for run, (slot, group) in zip(launch, slots):
        run.slot, run.gpus = slot, group
        run.mem_fraction = memory_fraction(runs_per_gpu)
    return Plan(name, is_sweep, workdir, planned, len({s for s, _ in slots}))


def plan_as_shell(plan: Plan) -> str:
    """Bash assignments for ``eval`` in launch.sh (every value quoted)."""
    q = shlex.quote

    def array(name, values):
        return f"{name}=({' '.join(q(str(v)) for v in values)})"

    runs = plan.runs
    return "\n".join([
        f"SWEEP_NAME={q(plan.sweep_name)}",
        f"IS_SWEEP={int(plan.is_sweep)}",
        f"WORKDIR={q(plan.workdir)}",
        f"NUM_SLOTS={plan.num_slots}",
        array("RUN_NAME", [r.name for r in runs]),
        array("RUN_CONFIG", [r.config for r in runs]),
        array("RUN_DIR", [r.workdir for r in runs]),
        array("RUN_STATE", [r.status.state for r in runs]),
        array("RUN_DESC", [r.status.describe() for r in runs]),
        array("RUN_SLOT", [r.slot for r in runs]),
        array("RUN_GPUS", [r.gpus for r in runs]),
        array("RUN_MEMFRAC", [r.mem_fraction for r in runs]),
    ]) + "\n"


def plan_as_text(plan: Plan) -> str:
    lines = [f"{plan.sweep_name}: {len(plan.runs)} run(s) in {plan.workdir}, {len(plan.to_launch)} to launch"]
    for r in plan.runs:
        share = f", {r.mem_fraction} of its memory" if r.mem_fraction else ""
        where = "" if r.slot < 0 else f"  [slot {r.slot}{', GPUs ' + r.gpus if r.gpus else ''}{share}]"
        lines.append(f"  {r.name:<16} {r.status.describe()}{where}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- SLURM


def _sbatch_option_names(opts: Sequence[str]) -> dict[str, str | None]:
    """``["-p", "gpu", "--gres=gpu:4"]`` -> ``{"-p": "gpu", "--gres": "gpu:4"}``."""
    out, i = {}, 0
    while i < len(opts):
        o = opts[i]
        if o.startswith("--"):
            key, sep, value = o.partition("=")
            out[key] = value if sep else None
        elif o.startswith("-"):
            value = opts[i + 1] if i + 1 < len(opts) and not opts[i + 1].startswith("-") else None
            out[o[:2]] = o[2:] or value
            i += value is not None and not o[2:]
        i += 1
    return out


def _sbatch_lines(opts: Sequence[str]) -> list[str]:
    """User sbatch options as ``#SBATCH`` lines (a short option keeps its separate value)."""
    lines, i = [], 0
    while i < len(opts):
        o = opts[i]
        if o.startswith("-") and not o.startswith("--") and len(o) == 2 and i + 1 < len(opts) \
                and not opts[i + 1].startswith("-"):
            lines.append(f"#SBATCH {o} {opts[i + 1]}")
            i += 2
            continue
        if not o.startswith("-"):
            raise LaunchError(f"sbatch option {o!r} does not start with '-' (e.g. --partition=gpu, -p gpu)")
        lines.append(f"#SBATCH {o}")
        i += 1
    return lines


def gpus_per_node(opts: Sequence[str]) -> int:
    """GPUs per node asked for with --gpus-per-node=N or --gres=gpu[:type]:N (default 1)."""
    named = _sbatch_option_names(opts)
    if named.get("--gpus-per-node"):
        return int(named["--gpus-per-node"].split(":")[-1])
    for part in (named.get("--gres") or "").split(","):
        fields = part.split(":")
        if fields[0] == "gpu":
            return int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return 1


def sbatch_script(plan: Plan, python: str, overrides: Sequence[str] = (), sbatch_opts: Sequence[str] = (),
                  cwd: str | None = None, parallel: int | None = None) -> str:
    """A job array, one element per unfinished run; each element is one data-parallel run with one
    task per GPU (``srun``; jax.distributed picks up SLURM's variables in resnet_jax.main and binds
    task i to local GPU i). SIGTERM two minutes before the time limit makes runs save and exit;
    re-launching resumes them."""
    runs = plan.to_launch
    if not runs:
        raise LaunchError("every run is finished; nothing to submit")
    named = _sbatch_option_names(sbatch_opts)
    gpus = gpus_per_node(sbatch_opts)
    q = shlex.quote
    cwd = cwd or os.getcwd()
    lines = ["#!/bin/bash",
             f"# Written by launch.sh: {plan.sweep_name}, {len(runs)} of {len(plan.runs)} run(s) "
             "(finished runs are left out); one array element per run, one task per GPU.",
             f"#SBATCH --job-name={plan.sweep_name}",
             f"#SBATCH --array=0-{len(runs) - 1}" + (f"%{parallel}" if parallel else "")]
    if "--ntasks-per-node" not in named:
        lines.append(f"#SBATCH --ntasks-per-node={gpus}")
    if "--gpus-per-node" not in named and "--gres" not in named and "-G" not in named and "--gpus" not in named:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if "--output" not in named and "-o" not in named:
        lines.append(f"#SBATCH --output={os.path.join(plan.workdir, 'slurm', '%x-%A_%a.out')}")
    if "--signal" not in named:
        lines.append("#SBATCH --signal=TERM@120")
    lines += _sbatch_lines(sbatch_opts)
    lines += ["", "set -euo pipefail", f"cd {q(cwd)}",
              f"NAMES=({' '.join(q(r.name) for r in runs)})",
              f"CONFIGS=({' '.join(q(r.config) for r in runs)})",
              f"WORKDIRS=({' '.join(q(r.workdir) for r in runs)})",
              "i=${SLURM_ARRAY_TASK_ID:-0}",
              'echo "run ${NAMES[$i]} in ${WORKDIRS[$i]}: $SLURM_NTASKS task(s) on $SLURM_JOB_NUM_NODES node(s)"',
              f"srun --kill-on-bad-exit=1 {q(python)} -m resnet_jax.main --config=\"${{CONFIGS[$i]}}\" "
              f"--workdir=\"${{WORKDIRS[$i]}}\"" + "".join(f" {q(o)}" for o in overrides)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=None, help="sweep directory (default runs/<sweep-or-run-name>)")
    parser.add_argument("config", help="CONFIG_FILE[:ARGS]")
    parser.add_argument("overrides", nargs="*", help="--config.FIELD=VALUE (put them after --)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__, prog="python -m resnet_jax.sweep")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the run names of a config (one line each)")
    p.add_argument("config")
    p = sub.add_parser("status", help="new / partial / finished, for run directories")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--num-train-steps", type=int, default=None)
    p = sub.add_parser("plan", help="what launch.sh would do")
    _common(p)
    p.add_argument("--gpus", default="", help="GPU ids, e.g. 0,1,2,3 ('' = none)")
    p.add_argument("--parallel", type=int, default=None)
    p.add_argument("--data-parallel", action="store_true")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="K runs share each GPU (group)")
    p.add_argument("--format", choices=("text", "shell"), default="text")
    p = sub.add_parser("sbatch", help="the sbatch script for the unfinished runs")
    _common(p)
    p.add_argument("--python", required=True, help="the python that runs resnet_jax on the cluster")
    p.add_argument("--sbatch-opt", action="append", default=[], help="one sbatch option (repeat)")
    p.add_argument("--parallel", type=int, default=None, help="at most N array elements at once")
    p = sub.add_parser("wandb", help="a W&B Sweeps YAML whose agents run main (docs/wandb-sweeps.md)")
    wandb_sweep.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            runs, _ = list_runs(args.config)
            print("\n".join(r.name or "(single run)" for r in runs))
        elif args.command == "status":
            for d in args.run_dirs:
                print(f"{d}\t{run_status(d, args.num_train_steps).describe()}")
        elif args.command == "plan":
            plan = make_plan(args.config, args.workdir, args.overrides, parse_gpus(args.gpus), args.parallel,
                             args.data_parallel, args.runs_per_gpu)
            sys.stdout.write(plan_as_shell(plan) if args.format == "shell" else plan_as_text(plan))
        elif args.command == "sbatch":
            plan = make_plan(args.config, args.workdir, args.overrides)
            sys.stdout.write(sbatch_script(plan, args.python, args.overrides, args.sbatch_opt,
                                           parallel=args.parallel))
        elif args.command == "wandb":
            return wandb_sweep.write(args)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
