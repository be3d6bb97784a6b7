"""The dashboard spec names only what real runs log, and wandb-workspaces accepts it.

Two short real offline runs through resnet_jax.main (a plain CIFAR net on the real subset, a
streamed ImageNet-style ResNet-18 on a tiny JPEG dataset) give every history key, summary key,
config path, tag and run attribute a run writes; every name a panel, filter or column of the
dashboard uses must be among them, so renaming a metric fails here instead of silently emptying
a panel.
"""
import glob
import json
import re
import subprocess
import sys

import pytest

from benchmarks import jpeg_dataset
from helpers import (REPO, TINY, env_with_devices, read_jsonl, read_wandb_offline_run, read_wandb_run_record,
                     run_main)
from resnet_jax import dashboard

GROUP = "dashboard-test"


def flat_paths(tree, prefix=""):
    """{"model": {"depth": 8}} -> {"model", "model.depth"}."""
    out = set()
    for key, value in tree.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= flat_paths(value, prefix + key + ".")
    return out


def media_keys(keys):
    """W&B sends a histogram as KEY/_type, KEY/bins, KEY/values; the server (and a panel) knows it as KEY."""
    media = {k[:-len("/_type")] for k in keys if k.endswith("/_type")}
    return media | {k for k in keys if k.rpartition("/")[0] not in media}


def logged(workdir):
    """What one finished offline run wrote: W&B history/summary/config/tags/run attributes, and metrics.jsonl."""
    run_file, = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config, summary = read_wandb_offline_run(run_file)
    run = read_wandb_run_record(run_file)
    return {"history": media_keys({k for row in history for k in row}), "summary": set(summary),
            "config": flat_paths({k: v for k, v in config.items() if not k.startswith("_")}),
            "tags": set(run["tags"]), "run": {"job_type"} if run["job_type"] else set(),
            "jsonl": {k for r in read_jsonl(workdir / "metrics.jsonl") for k in r}, "group": run["group"]}


def missing(spec, runs):
    """Names the spec uses that no run wrote (tags: some run; everything else: every run)."""
    used, out = dashboard.referenced(spec), []
    for where in ("history", "summary", "config", "run"):
        out += [f"{where}:{k}" for k in sorted(used[where]) if any(k not in r[where] for r in runs)]
    out += [f"tags:{t}" for t in sorted(used["tags"]) if not any(t in r["tags"] for r in runs)]
    out += [f"regex:{x}" for x in sorted(used["regex"])
            if any(not any(re.search(x, k) for k in r["history"]) for r in runs)]
    return out


@pytest.fixture(scope="module")
def cifar_run(tfds_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cifar")
    run_main(workdir, f"--config.data_dir={tfds_data_dir}", *TINY, "--config.num_train_steps=10",
             "--config.model.residual=false", "--config.diagnostics_every=5", f"--config.wandb.group={GROUP}",
             "--config.wandb.job_type=plain-8", env=env_with_devices(8, WANDB_MODE="offline"))
    return logged(workdir)


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """A streamed resnet-18 of the Fig. 4 sweep, 5 steps on 40 JPEGs (as tests/test_imagenet.py makes them)."""
    data = jpeg_dataset.build(str(tmp_path_factory.mktemp("tfds")), 40, 13, sizes=((60, 80), (80, 60)))
    workdir = tmp_path_factory.mktemp("imagenet")
    run_main(workdir, f"--config.data_dir={data}", f"--config.dataset={jpeg_dataset.NAME}", "--config.batch_size=8",
             "--config.eval_batch_size=8", "--config.image_size=32", "--config.train_resize=(40, 64)",
             "--config.eval_resize=40", "--config.shuffle_buffer=16", "--config.log_every=5",
             "--config.num_classes=10", "--config.train_examples=40", "--config.num_epochs=1",
             "--config.checkpoint_every=5", "--config.diagnostics_every=5", f"--config.wandb.group={GROUP}",
             "--config.wandb.job_type=resnet-18", config="configs/imagenet_degradation.py:run=resnet-18", devices=1,
             env=env_with_devices(1, WANDB_MODE="offline"))
    return logged(workdir)


@pytest.mark.slow  # two real runs with diagnostics: ~150 s on 2 shared CPU cores (most of it XLA compiling)
def test_every_name_the_dashboards_use_is_logged_by_real_runs(cifar_run, imagenet_run):
    runs = [cifar_run, imagenet_run]
    assert all(r["group"] == GROUP and r["run"] == {"job_type"} for r in runs)
    assert {"plain", "residual"} <= cifar_run["tags"] | imagenet_run["tags"]
    for kind in dashboard.KINDS:
        spec = dashboard.build_spec("me", "resnet-degradation", GROUP, kind)
        assert missing(spec, runs) == [], kind
        # Scalars are metrics.jsonl's keys as they are (lists become KEY/0000... and KEY_hist on W&B only).
        scalars = {k for k in dashboard.referenced(spec)["history"] if not k.endswith("_hist")}
        assert all(scalars <= r["jsonl"] for r in runs)
    renamed = dashboard.build_spec("me", "p", GROUP, "cifar")
    renamed["workspace"]["sections"][0]["panels"][0]["y"] = ["train/err"]
    assert missing(renamed, runs) == ["history:train/err"]


@pytest.mark.parametrize("group,kind,nets", [("cifar10-degradation-quick", "cifar", 10),
                                             ("imagenet-degradation", "imagenet", 6), ("cifar10-width", "width", 18)])
def test_spec_per_kind_and_the_wandb_workspaces_objects(group, kind, nets):
    wr = pytest.importorskip("wandb_workspaces.reports.v2", reason="pip install 'resnet_jax[dashboard]'")

    spec = dashboard.build_spec("me", "resnet-degradation", group)
    assert spec["kind"] == kind and len(spec["runs"]["colours"]) == nets
    if kind == "cifar":  # a plain net and its residual twin share the colour of their depth
        assert spec["runs"]["colours"]["plain-56"] == spec["runs"]["colours"]["resnet-56"]
    grids = [b for b in spec["report"]["blocks"] if b["type"] == "panels"]
    assert [g["tags"] for g in grids[:2]] == [["plain"], ["residual"]] and grids[2]["panels"][0]["type"] == "bar"
    code = next(b for b in spec["report"]["blocks"] if b["type"] == "code")["lines"]
    assert any(c.startswith("./launch.sh configs/") for c in code) and code[-1].endswith(f"--kind {kind}")
    # The real objects: the workspace serialises fully offline; the report is built and its panels
    # serialise (a report's run sets look their project up on the server when saved).
    view = dashboard.workspace(spec)
    model = view._to_model()
    assert [s.name for s in view.sections] == [s["name"] for s in spec["workspace"]["sections"]]
    assert model.spec.section.run_sets[0].grouping[0].name == "jobType"
    panels = [p for s in model.spec.section.panel_bank_config.sections for p in s.panels]
    assert {(p.config.group_by, p.config.group_agg, p.config.group_area) for p in panels} == {("jobType", "mean", "stddev")}
    report = dashboard.report(spec)
    panel_grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(panel_grids) == len(grids)
    for grid in panel_grids:
        for p in grid.panels:
            p._to_model()
        assert len(grid.custom_run_colors) == nets


def test_dry_run_prints_the_spec_without_network(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "resnet_jax.dashboard", "--entity", "me", "--group",
                           "cifar10-degradation-quick", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env_with_devices(1, WANDB_MODE="offline", HTTPS_PROXY="http://127.0.0.1:9"))
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)
    assert spec["group"] == "cifar10-degradation-quick" and spec["runs"]["group_by"] == "job_type"
    bad = subprocess.run([sys.executable, "-m", "resnet_jax.dashboard", "--entity", "me", "--group", "g", "--kind",
                          "mnist", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'mnist'" in bad.stderr
