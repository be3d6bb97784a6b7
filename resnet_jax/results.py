"""Reading finished or running runs, for figures, tables and sweep status: local run directories
(config.json + metrics.jsonl) or W&B.

    python experiments/plot_degradation.py runs/cifar10-degradation        # Fig. 6
    python experiments/report.py runs/cifar10-degradation                  # Table 6 next to ours

Both read runs through `load_runs`, which takes run directories, sweep directories (whose
sub-directories are runs) or a W&B project and group. A run still in progress is read as far as
it got. What a run trained (depth, residual, ...) is read from its config.
Nothing here imports jax.
"""
from __future__ import annotations

import dataclasses
import os
import re
import statistics
from typing import Any, Iterable, Sequence

from resnet_jax import run_dir
from resnet_jax.config_args import split_seed
from resnet_jax.metric_writers import has_wandb_api_key

NORM_SUFFIX = {"batch": "", "group": "-gn", "none": "-nobn"}  # as the configs name runs
# (preact, bottleneck) -> the block those flags pick (models.block_name), which Run.kind already says
FLAG_BLOCKS = {(False, False): "basic", (False, True): "bottleneck", (True, False): "preact",
               (True, True): "preact_bottleneck"}


@dataclasses.dataclass
class Run:
    name: str                          # the run's name: plain-56, resnet-110, ...
    depth: int | None                  # of the net it trained (config.model.depth)
    residual: bool | None
    preact: bool = False
    num_train_steps: int | None = None
    train: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, error in [0, 1])
    test: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    hardware: str = "?"
    data: str = "?"                    # "train/test" example counts
    img_per_s: float | None = None     # median training throughput
    source: str = ""                   # run directory or W&B URL
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> dict:
        return self.config.get("model") or {}

    @property
    def width(self) -> int:
        """The widen factor k of a WRN-d-k (0: not a WRN)."""
        return int(self.model.get("widen_factor") or 0) if self.model.get("family") == "wrn" else 0

    @property
    def kind(self) -> str:
        if self.residual is None:
            return "?"
        if self.width:
            return "wrn" if self.residual else "plain-wrn"
        return ("preact-resnet" if self.preact else "resnet") if self.residual else "plain"

    @property
    def net(self) -> str:
        """What was trained, e.g. plain-56, wrn-16-8, plain-20-nobn, resnet-20-NEWBLOCK (may differ from
        `name` when a field was overridden)."""
        net = f"{self.kind}-{self.depth if self.depth is not None else '?'}" + (f"-{self.width}" if self.width else "")
        net += f"-{self.block}" if self.block else ""
        return net + NORM_SUFFIX.get(self.model.get("norm") or "batch", "-" + str(self.model.get("norm")))

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return None if seed is None else int(seed)

    @property
    def is_paper_net(self) -> bool:
        """One of the paper's plain/ResNet nets (its blocks, batch norm), which its numbers are for."""
        m = self.model
        own_block = m.get("block") in (None, "basic") and not (m.get("bottleneck") and not self.is_imagenet)
        return (self.kind in ("plain", "resnet") and own_block and (m.get("norm") or "batch") == "batch"
                and m.get("family", "cifar") in ("cifar", "imagenet"))

    @property
    def job(self) -> str:
        """The net as its sweep named it (the W&B job type; the run name without /seed-K): the seeds
        of one net share it."""
        return (self.config.get("wandb") or {}).get("job_type") or split_seed(self.name)[0]

    @property
    def diverged(self) -> dict | None:
        """{step, last_good_checkpoint} where the run stopped on a non-finite loss (run_dir.mark_diverged)."""
        return (self.config.get("runtime") or {}).get("diverged")

    @property
    def block(self) -> str:
        """A block type named in the config (model.block) that the kind does not already say ('' if none):
        e.g. a block registered in models.BLOCKS after these runs' families."""
        block = self.model.get("block")
        implied = "wide" if self.width else FLAG_BLOCKS[(bool(self.preact), bool(self.model.get("bottleneck")))]
        return "" if not block or block == implied else str(block)

    @property
    def size(self) -> int | tuple | None:
        """What tells nets of one kind apart, for colours: the depth, or (depth, k) for WRN-d-k."""
        return (self.depth, self.width) if self.width else self.depth

    @property
    def steps_done(self) -> int:
        return max([s for s, _ in self.train] + [s for s, _ in self.test] + [0])

    @property
    def finished(self) -> bool:
        return self.num_train_steps is not None and self.steps_done >= self.num_train_steps

    @property
    def final_train_error(self) -> float | None:
        return self.train[-1][1] if self.train else None

    @property
    def final_test_error(self) -> float | None:
        return self.test[-1][1] if self.test else None

    @property
    def best_test_error(self) -> float | None:
        return min(e for _, e in self.test) if self.test else None

    @property
    def dataset(self) -> str:
        return self.config.get("dataset") or "cifar10"

    @property
    def is_imagenet(self) -> bool:
        """An ImageNet-style (streamed) run: Fig. 4 / Table 2 rather than Fig. 6 / Table 6."""
        return not self.dataset.startswith("cifar")

    @property
    def shortcut(self) -> str | None:
        return (self.config.get("model") or {}).get("shortcut")

    @property
    def steps_per_epoch(self) -> float | None:
        """From the config (ImageNet configs count in epochs) or what the run measured."""
        value = self.config.get("steps_per_epoch") or (self.config.get("runtime") or {}).get("steps_per_epoch")
        return float(value) if value else None

    def sort_key(self):
        order = {"plain": 0, "resnet": 1, "preact-resnet": 2, "plain-wrn": 3, "wrn": 4}.get(self.kind, 5)
        return order, self.depth if self.depth is not None else 1 << 30, self.width, self.name


def net_fields(config: dict, name: str = "") -> tuple[int | None, bool | None, bool]:
    """(depth, residual, preact) of the net a run trained, from its config.

    Only a run that has not written its config.json yet falls back to its name (``plain-56``,
    ``preact-resnet-164``); an unknown name gives (None, None, False), so a new family only
    needs its config.
    """
    model = config.get("model") or {}
    if "depth" in model:
        return int(model["depth"]), bool(model.get("residual")), bool(model.get("preact"))
    m = re.fullmatch(r"(preact-)?(plain|resnet)-(\d+)", name)
    return (int(m.group(3)), m.group(2) == "resnet", bool(m.group(1))) if m else (None, None, False)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN (written as the string "nan") -> None


def _median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def hardware_from_runtime(runtime: dict | None) -> str:
    if not runtime:
        return "?"
    kind = runtime.get("device_kind", "?")
    text = f"{runtime.get('devices', '?')}x {kind}"
    if runtime.get("processes", 1) not in (1, None):
        text += f" ({runtime['processes']} processes)"
    if kind.lower() == "cpu" and runtime.get("host"):
        text += f" on {runtime['host']}"
    return text


# ----------------------------------------------------------------------------- local runs


def load_run_dir(path: str) -> Run:
    try:
        config = run_dir.read_config(path) or {}
    except run_dir.RunDirError:
        config = {}  # a damaged config.json: the run is listed, with what its metrics say
    name = config.get("name") or os.path.basename(os.path.normpath(path))
    depth, residual, preact = net_fields(config, os.path.basename(os.path.normpath(path)))
    records = run_dir.read_metrics(path)
    train = [(int(r["step"]), e) for r in records if (e := _float(r.get("train/error"))) is not None]
    test = [(int(r["step"]), e) for r in records if (e := _float(r.get("test/error"))) is not None]
    runtime = config.get("runtime") or {}
    data = f"{runtime['num_train']}/{runtime['num_test']}" if "num_train" in runtime else "?"
    return Run(name=name, depth=depth, residual=residual,
               preact=preact, num_train_steps=config.get("num_train_steps"), train=train, test=test,
               hardware=hardware_from_runtime(runtime), data=data,
               img_per_s=_median(_float(r.get("img_per_s")) for r in records), source=path, config=config)


def find_run_dirs(paths: Sequence[str]) -> list[str]:
    """Each path is a run directory, or a sweep directory with runs below it (WORKDIR/NET, or
    WORKDIR/NET/seed-K for a sweep over seeds)."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such directory")
        runs = _runs_below(path, levels=3)
        if not runs:
            raise FileNotFoundError(f"{path}: neither a run directory (config.json, metrics.jsonl) "
                                    "nor a sweep directory with runs in it")
        found += runs
    return found


def _runs_below(path: str, levels: int) -> list[str]:
    """`path` if it is a run directory, else the run directories at most `levels` below it."""
    if run_dir.is_run_dir(path):
        return [path]
    if levels == 0:
        return []
    subs = sorted(os.path.join(path, d) for d in os.listdir(path))
    return [run for d in subs if os.path.isdir(d) for run in _runs_below(d, levels - 1)]


def load_local_runs(paths: Sequence[str]) -> list[Run]:
    return sorted((load_run_dir(d) for d in find_run_dirs(paths)), key=Run.sort_key)


# ----------------------------------------------------------------------------- W&B


class WandbUnavailable(RuntimeError):
    """The W&B public API cannot be reached (no API key, no network, no such project)."""


def _hardware_from_wandb(metadata: dict | None) -> str:
    metadata = metadata or {}
    if metadata.get("gpu"):
        return f"{metadata.get('gpu_count', '?')}x {metadata['gpu']}"
    if metadata.get("cpu_count"):
        return f"CPU ({metadata['cpu_count']} cores)"
    return "?"


def wandb_api(api=None):
    """`api` if given (tests), else ``wandb.Api()``, which needs network access and an API key."""
    if api is not None:
        return api
    if not has_wandb_api_key():
        raise WandbUnavailable(
            "reading W&B needs an API key (run `wandb login` or set WANDB_API_KEY) and network access; "
            "or plot the local run directories instead (each run writes metrics.jsonl)")
    try:
        import wandb

        return wandb.Api(timeout=30)
    except Exception as e:  # noqa: BLE001 - any failure here means: W&B is not usable
        raise WandbUnavailable(f"cannot use the W&B API: {type(e).__name__}: {e}") from None


def output_path(args, name: str) -> str:
    """--out, else NAME in the first run/sweep directory, else NAME-GROUP for W&B."""
    if args.out:
        return args.out
    return os.path.join(args.paths[0], name) if args.paths and not args.wandb else f"{name}-{args.group or 'wandb'}"


def load_wandb_runs(project: str, group: str | None = None, api=None) -> list[Run]:
    """Runs of W&B ``ENTITY/PROJECT`` (only those of `group` if given), read with the public API."""
    api = wandb_api(api)
    try:
        wandb_runs = list(api.runs(project, filters={"group": group} if group else {}))
    except Exception as e:  # noqa: BLE001
        raise WandbUnavailable(f"cannot list the runs of W&B project {project!r}"
                               f"{f' group {group!r}' if group else ''}: {type(e).__name__}: {e}") from None
    if not wandb_runs:
        raise WandbUnavailable(f"W&B project {project!r} has no runs{f' in group {group!r}' if group else ''}")
    runs = []
    for wr in wandb_runs:
        config = dict(wr.config)
        depth, residual, preact = net_fields(config, wr.name)

        def series(key):
            rows = wr.scan_history(keys=["_step", key])
            return sorted((int(r["_step"]), e) for r in rows if (e := _float(r.get(key))) is not None)

        speed = series("img_per_s")
        runs.append(Run(name=wr.name, depth=depth, residual=residual, preact=preact,
                        num_train_steps=config.get("num_train_steps"), train=series("train/error"),
                        test=series("test/error"), hardware=_hardware_from_wandb(getattr(wr, "metadata", None)),
                        img_per_s=_median(v for _, v in speed), source=getattr(wr, "url", project),
                        config=config))
    return sorted(runs, key=Run.sort_key)


def load_runs(paths: Sequence[str] = (), wandb_project: str | None = None, wandb_group: str | None = None) -> list[Run]:
    if wandb_project:
        return load_wandb_runs(wandb_project, wandb_group)
    if not paths:
        raise ValueError("give run or sweep directories, or --wandb ENTITY/PROJECT")
    return load_local_runs(paths)


def add_source_arguments(parser) -> None:
    parser.add_argument("paths", nargs="*", help="run directories, or sweep directories holding runs")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None,
                        help="read runs from W&B instead (public API; needs network and an API key)")
    parser.add_argument("--group", default=None, help="with --wandb: the sweep's W&B group, "
                        "e.g. cifar10-degradation")
