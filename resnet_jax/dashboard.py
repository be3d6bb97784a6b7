"""W&B dashboards as code: a saved workspace view and a report for one sweep group.

    python -m resnet_jax.dashboard --entity ME --project resnet-degradation --group cifar10-degradation-quick
    python -m resnet_jax.dashboard --entity ME --project resnet-degradation --group imagenet-degradation --dry-run

The spec is plain data (``build_spec``; ``--dry-run`` prints it as JSON, no network): sections of
panels naming the metric keys, summary keys, config paths and tags that runs of this codebase log
(resnet_jax/metric_writers.py, train.py, diagnostics.py; tests/test_dashboard.py checks them
against real offline runs). ``workspace`` and ``report`` turn it into wandb-workspaces objects;
without --dry-run both are saved and their URLs printed. Needs ``pip install wandb-workspaces``
(the ``dashboard`` extra) and a W&B login.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from resnet_jax import cli
from resnet_jax.sweep import LaunchError, load_module

# Per sweep kind: the sweep config (its nets and launch commands) and the paper's figure.
KINDS = {
    "cifar": {"config": "configs/cifar10_degradation.py", "arg": "with1202", "figure": "Fig. 6",
              "title": "CIFAR-10 degradation"},
    "imagenet": {"config": "configs/imagenet_degradation.py", "arg": "table3", "figure": "Fig. 4",
                 "title": "ImageNet degradation"},
    "width": {"config": "configs/cifar10_width.py", "arg": None, "figure": "width vs depth",
              "title": "CIFAR-10 width against depth"},
}
GROUP_BY = "job_type"                    # W&B run attribute = the net: the seeds of one net aggregate
RUN_ATTRIBUTE = {"job_type": "JobType"}  # its name in wandb-workspaces
AGGREGATE = {"line": "mean", "band": "stddev"}
FAMILIES = (("plain", "Plain nets"), ("residual", "Residual nets"))  # tags (metric_writers.wandb_tags)
PER_LAYER = ("response_std", "grad_norm", "weight_norm", "grad_to_weight", "branch_ratio")  # diagnostics.record
COLUMNS = ("config:model.depth", "config:model.residual", "config:model.shortcut", "config:seed",
           "summary:final/test_error", "summary:best/test_error", "summary:final/train_error")
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")


# ----------------------------------------------------------------------------- the spec (plain data)


def line(title: str, *keys: str, log_y: bool = False) -> dict:
    return {"type": "line", "title": title, "x": "Step", "y": list(keys), "log_y": log_y}


def layers(key: str) -> dict:
    """One line per layer (``KEY/0000``, ``KEY/0001``, ... as metric_writers.wandb_metrics logs a list)."""
    return {"type": "line", "title": f"{key} per layer", "x": "Step", "y": [], "regex": f"^{key}/[0-9]+$",
            "log_y": True}


def histogram(key: str) -> dict:
    """How a per-layer list spreads over the layers, step by step (``KEY_hist``)."""
    return {"type": "line", "title": f"{key} over layers (histogram)", "x": "Step", "y": [f"{key}_hist"],
            "log_y": False}


def final_errors() -> dict:
    """The final error of every net (bars grouped by net = depth and plain/residual, mean and spread over seeds)."""
    return {"type": "bar", "title": "final error by depth, plain and residual", "summary": ["final/test_error",
            "final/train_error", "best/test_error"]}


def sections(figure: str) -> list[dict]:
    """The panels, section by section (the workspace's sections and the report's panel grids)."""
    d = "diagnostics/"
    return [
        {"name": f"Error ({figure})", "panels": [line("training error", "train/error"),
                                                 line("test error", "test/error")]},
        {"name": "Loss", "panels": [line("training loss", "train/loss"), line("test loss", "test/loss")]},
        {"name": "Learning rate", "panels": [line("learning rate", "lr", log_y=True)]},
        {"name": "Throughput", "panels": [line("images/s", "img_per_s")]},
        {"name": "Diagnostics", "panels": [
            line("gradient-to-weight ratio, first conv / last conv", f"{d}grad_to_weight_first_over_last", log_y=True),
            line("|F(x)| / |x|, mean over blocks", f"{d}branch_ratio_mean", f"{d}branch_ratio_max"),
            line("gradient norm (all kernels)", f"{d}grad_norm_global", log_y=True),
            line("layer response std, mean (Fig. 7)", f"{d}response_std_mean")]},
        {"name": "Diagnostics per layer", "panels": [layers(d + k) for k in PER_LAYER]
         + [histogram(d + k) for k in PER_LAYER]},
    ]


def net_of(run: str) -> str:
    """The job type of a sweep run: ``plain-56/seed-2`` -> ``plain-56``."""
    return run.partition("/seed-")[0]


def depth_key(net: str) -> str:
    """What a net's colour follows: its depth (``plain-56``, ``resnet-56`` -> ``56``; ``wrn-16-4`` stays)."""
    name = net.removeprefix("plain-")
    return name.split("-", 1)[1] if name.startswith(("resnet-", "preact-resnet-")) else name


def nets(kind: str) -> list[str]:
    """Every net of the kind's sweep (its largest variant), in launch order."""
    k = KINDS[kind]
    module = load_module(k["config"])
    return list(dict.fromkeys(net_of(r) for r in module.get_sweep(k["arg"])))


def colours(names: Sequence[str]) -> dict:
    """One colour per depth, shared by a plain net and its residual twin (as Fig. 6 colours depth)."""
    keys = list(dict.fromkeys(depth_key(n) for n in names))
    return {n: PALETTE[keys.index(depth_key(n)) % len(PALETTE)] for n in names}


def commands(kind: str, entity: str, project: str, group: str) -> list[str]:
    """The commands that make the runs (from the sweep config's docstring) and this dashboard."""
    module = load_module(KINDS[kind]["config"])
    return cli.examples(module.__doc__) + [
        f"python -m resnet_jax.dashboard --entity {entity} --project {project} --group {group} --kind {kind}"]


def report_blocks(kind: str, entity: str, project: str, group: str) -> list[dict]:
    """Plain and residual nets in separate grids (Fig. 6 left and right), final errors, commands."""
    figure = KINDS[kind]["figure"]
    error = sections(figure)[0]["panels"]
    blocks = [{"type": "markdown", "text": f"Runs of W&B group `{group}`, one line per net ({GROUP_BY}): the mean "
               f"over its seeds with a {AGGREGATE['band']} band. As in the paper's {figure}, plain nets "
               "in one grid and residual nets in the next, coloured by depth."}]
    blocks += [{"type": "panels", "name": name, "tags": [tag], "panels": error} for tag, name in FAMILIES]
    blocks += [{"type": "panels", "name": "Final error", "tags": [], "panels": [final_errors()]}]
    blocks += [{"type": "panels", "name": s["name"], "tags": [], "panels": s["panels"]} for s in sections(figure)[1:]]
    blocks += [{"type": "code", "language": "bash", "lines": commands(kind, entity, project, group)}]
    return blocks


def infer_kind(group: str) -> str:
    """The sweep a group's name comes from (the sweeps' SWEEP_NAMEs: imagenet-..., cifar10-width, cifar10-...)."""
    if group.startswith("imagenet"):
        return "imagenet"
    return "width" if "width" in group else "cifar"


def build_spec(entity: str, project: str, group: str, kind: str | None = None) -> dict:
    """The whole dashboard as plain data: what ``--dry-run`` prints and the tests check."""
    kind = kind or infer_kind(group)
    if kind not in KINDS:
        raise LaunchError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    names = nets(kind)
    title = f"{KINDS[kind]['title']}: {group}"
    return {
        "kind": kind, "entity": entity, "project": project, "group": group,
        "runs": {"filter_group": group, "group_by": GROUP_BY, **AGGREGATE, "colours": colours(names),
                 "columns": list(COLUMNS)},
        "workspace": {"name": title, "sections": sections(KINDS[kind]["figure"])},
        "report": {"title": title, "description": f"{KINDS[kind]['figure']} from the runs of {group}",
                   "blocks": report_blocks(kind, entity, project, group)},
    }


def referenced(spec: dict) -> dict:
    """Every name the spec refers to, by where a run must have it: history, summary, config, tags, regexes."""
    out = {"history": set(), "summary": set(), "config": set(), "tags": set(), "regex": set(), "run": set()}
    panels = [p for s in spec["workspace"]["sections"] for p in s["panels"]]
    for block in spec["report"]["blocks"]:
        panels += block.get("panels", [])
        out["tags"].update(block.get("tags", []))
    for p in panels:
        out["history"].update(p.get("y", []))
        out["summary"].update(p.get("summary", []))
        if p.get("regex"):
            out["regex"].add(p["regex"])
    for column in spec["runs"]["columns"]:
        section, _, name = column.partition(":")
        out[section].add(name)
    out["run"].add(spec["runs"]["group_by"])
    return out


# ----------------------------------------------------------------------------- wandb-workspaces objects


def _column(column: str) -> str:
    """``config:model.depth`` -> ``config:model.value.depth`` (W&B nests each config key under value)."""
    section, _, name = column.partition(":")
    if section != "config":
        return column
    first, _, rest = name.partition(".")
    return f"config:{first}.value" + (f".{rest}" if rest else "")


def panel(p: dict):
    import wandb_workspaces.reports.v2 as wr

    if p["type"] == "bar":
        return wr.BarPlot(title=p["title"], metrics=[wr.SummaryMetric(k) for k in p["summary"]], orientation="v",
                          groupby=RUN_ATTRIBUTE[GROUP_BY], groupby_aggfunc=AGGREGATE["line"],
                          groupby_rangefunc=AGGREGATE["band"])
    return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]), metric_regex=p.get("regex"),
                       log_y=p["log_y"] or None, groupby=RUN_ATTRIBUTE[GROUP_BY], groupby_aggfunc=AGGREGATE["line"],
                       groupby_rangefunc=AGGREGATE["band"])


def _group_filter(group: str, tags: Sequence[str] = ()):
    import wandb_workspaces.expr as expr

    return expr.And(expr.Metric("Group") == group, *([expr.Tags().isin(list(tags))] if tags else []))


def workspace(spec: dict):
    """The saved workspace view: every section, runs of the group grouped by net, coloured by depth."""
    import wandb_workspaces.expr as expr
    import wandb_workspaces.workspaces as ws

    runs = spec["runs"]
    return ws.Workspace(
        entity=spec["entity"], project=spec["project"], name=spec["workspace"]["name"],
        sections=[ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
                  for s in spec["workspace"]["sections"]],
        settings=ws.WorkspaceSettings(x_axis="Step", max_runs=100),
        runset_settings=ws.RunsetSettings(filters=_group_filter(runs["filter_group"]),
                                          groupby=[expr.Metric(RUN_ATTRIBUTE[GROUP_BY])], group_colors=dict(runs["colours"]),
                                          pinned_columns=[_column(c) for c in runs["columns"]]))


def block(b: dict, spec: dict):
    import wandb_workspaces.reports.v2 as wr

    if b["type"] == "markdown":
        return wr.MarkdownBlock(text=b["text"])
    if b["type"] == "code":  # (CodeBlock has no bash highlighting; a fenced markdown block has)
        return wr.MarkdownBlock(text=f"```{b['language']}\n" + "\n".join(b["lines"]) + "\n```")
    attribute = RUN_ATTRIBUTE[GROUP_BY]
    runset = wr.Runset(entity=spec["entity"], project=spec["project"], name=b["name"],
                       filters=_group_filter(spec["runs"]["filter_group"], b["tags"]), groupby=[attribute])
    colours = {wr.RunsetGroup(runset_name=b["name"], keys=(wr.RunsetGroupKey(key=wr.Metric(attribute), value=net),)):
               colour for net, colour in spec["runs"]["colours"].items()}
    return wr.PanelGrid(runsets=[runset], panels=[panel(p) for p in b["panels"]], custom_run_colors=colours)


def report(spec: dict):
    import wandb_workspaces.reports.v2 as wr

    r = spec["report"]
    return wr.Report(entity=spec["entity"], project=spec["project"], title=r["title"], description=r["description"],
                     blocks=[wr.H1(text=r["title"])] + [block(b, spec) for b in r["blocks"]])


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser(__doc__, prog="python -m resnet_jax.dashboard")
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", default="resnet-degradation", help="W&B project (config.wandb.project)")
    parser.add_argument("--group", required=True, help="the sweep's W&B group, e.g. cifar10-degradation-quick")
    parser.add_argument("--kind", choices=tuple(KINDS), default=None, help="default: from the group's name")
    parser.add_argument("--dry-run", action="store_true", help="print the spec as JSON; no network")
    args = parser.parse_args(argv)
    try:
        spec = build_spec(args.entity, args.project, args.group, args.kind)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(spec, indent=1))
        return 0
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        print("error: the dashboard needs wandb-workspaces: pip install 'resnet_jax[dashboard]'", file=sys.stderr)
        return 2
    view, rep = workspace(spec), report(spec)
    view.save()
    rep.save()
    print(f"workspace: {view.url}\nreport: {rep.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
