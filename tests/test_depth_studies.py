"""Depth studies end to end on the real CIFAR-10 subset: a Wide ResNet (with dropout) and a plain net
without BN train through resnet_jax.main, resume bit-identically, and show up labelled in
plot_degradation.py, report.py and plot_gradient_flow.py; the block type of docs/models-extending.md
(its diff applied to a copy of the package) trains through main; the vanishing-gradient experiment runs."""
import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, env_with_devices, read_jsonl, run_main
from test_resume import assert_same_metrics

sys.path.insert(0, str(REPO))

from experiments import plot_degradation, plot_gradient_flow, report  # noqa: E402
from resnet_jax import models  # noqa: E402
from resnet_jax.results import Run, load_local_runs  # noqa: E402

STEPS = 12
RUN = ("--config.batch_size=16", "--config.log_every=3", "--config.eval_every=6", "--config.checkpoint_every=6",
       "--config.eval_batch_size=512", "--config.diagnostics_every=6", "--config.diagnostics_batch=16")
# run name -> (config, Run.net)
NETS = {"wrn-10-2-dropout0.3": ("configs/cifar10.py:depth=10,width=2,dropout=0.3", "wrn-10-2"),
        "plain-8-nobn": ("configs/cifar10.py:depth=8,residual=false,norm=none", "plain-8-nobn")}
NEW_BLOCK = "relu_before_add"


@pytest.fixture(scope="module")
def sweep(data_flag, tmp_path_factory):
    """Each net of NETS trained uninterrupted for STEPS steps, in SWEEP/NAME."""
    root = tmp_path_factory.mktemp("depth_studies")
    for name, (config, _) in NETS.items():
        run_main(root / name, data_flag, *RUN, f"--config.num_train_steps={STEPS}", config=config)
    return root


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
@pytest.mark.parametrize("name", NETS)
def test_trains_and_resumes_bit_identically(sweep, data_flag, tmp_path, name):
    config = NETS[name][0]
    run_main(tmp_path, data_flag, *RUN, f"--config.num_train_steps={STEPS // 2}", config=config)
    resumed = run_main(tmp_path, data_flag, *RUN, f"--config.num_train_steps={STEPS}", config=config)
    assert f"resuming from step {STEPS // 2}" in resumed.stdout
    reference = read_jsonl(sweep / name / "metrics.jsonl")
    assert_same_metrics(read_jsonl(tmp_path / "metrics.jsonl"), reference)
    assert reference[-1]["step"] == STEPS and math.isfinite(reference[-1]["train/loss"])
    assert [r["step"] for r in reference if "diagnostics/grad_norm" in r] == [0, 6, 12]


def test_labelled_in_plot_and_report(sweep):
    runs = {r.name: r for r in load_local_runs([str(sweep)])}
    assert {n: r.net for n, r in runs.items()} == {n: net for n, (_, net) in NETS.items()}
    assert runs["wrn-10-2-dropout0.3"].size == (10, 2) and runs["plain-8-nobn"].size == 8
    fig = plot_degradation.plot(list(runs.values()))
    by_title = {ax.get_title(): ax for ax in fig.axes}
    plain_labels = [l.get_label() for l in by_title["plain"].get_lines() if l.get_gid()]
    resnet_labels = [l.get_label() for l in by_title["ResNet"].get_lines() if l.get_gid()]
    assert "plain-8-nobn" in plain_labels and "wrn-10-2-dropout0.3 (wrn-10-2)" in resnet_labels
    text = report.report(list(runs.values()))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    for name, (_, net) in NETS.items():
        assert rows[name][1] == net and rows[name][-2:] == ["-", "- |"]  # no paper numbers beside them


def test_labelled_in_gradient_flow_plot(sweep):
    runs = plot_gradient_flow.load_local([str(sweep)])
    assert plot_gradient_flow.pick_steps(runs) == [0, 6, 12]
    fig = plot_gradient_flow.plot(runs, [0, 12], ("grad_norm", "branch_ratio"))
    lines = {l.get_gid(): l for ax in fig.axes for l in ax.get_lines() if l.get_gid()}
    wrn, plain = lines["wrn-10-2-dropout0.3/grad_norm/12"], lines["plain-8-nobn/grad_norm/0"]
    assert wrn.get_label() == "wrn-10-2" and wrn.get_linestyle() == "-"
    assert plain.get_label() == "plain-8-nobn" and plain.get_linestyle() == "--"
    # every conv layer (stem, 2 per block, a projection in each WRN group: 16 -> 32 -> 64 -> 128 channels), every block
    assert len(wrn.get_ydata()) == 1 + 2 * 3 + 3 and len(plain.get_ydata()) == 1 + 2 * 3
    assert len(lines["wrn-10-2-dropout0.3/branch_ratio/12"].get_ydata()) == 3


def test_paper_numbers_only_beside_the_paper_nets():
    def run(**model):
        return Run(name="x", depth=model["depth"], residual=model.get("residual", True),
                   config={"model": {"family": "cifar", **model}})
    assert report.paper_numbers(run(depth=20, residual=False)) == ("~1.3", "~9.6")
    assert report.paper_numbers(run(depth=20, residual=False, norm="none")) == ("-", "-")
    assert report.paper_numbers(run(depth=56, block=NEW_BLOCK)) == ("-", "-")
    assert report.paper_numbers(run(depth=20, bottleneck=True)) == ("-", "-")
    assert report.paper_numbers(run(depth=56, norm="group")) == ("-", "-")
    assert report.paper_numbers(run(depth=20, family="wrn", widen_factor=4)) == ("-", "-")
    assert run(depth=56, block=NEW_BLOCK).net == f"resnet-56-{NEW_BLOCK}"
    assert run(depth=56, block="basic").net == "resnet-56"


def documented_diff() -> str:
    text = (REPO / "docs" / "models-extending.md").read_text()
    return re.search(r"^```diff\n(.*?)^```$", text, re.S | re.M).group(1)


def test_the_documented_block_diff_trains_through_main(data_flag, tmp_path):
    with pytest.raises(ValueError, match=f"unknown block '{NEW_BLOCK}'"):
        models.create_model("cifar", depth=8, block=NEW_BLOCK)  # before the diff
    copy = tmp_path / "repo"
    for part in ("resnet_jax", "configs"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "apply", "-"], input=documented_diff(), cwd=copy, text=True, check=True)
    assert "class ReluBeforeAdditionBlock(BasicBlock)" in (copy / "resnet_jax/models/blocks.py").read_text()
    workdir = tmp_path / "run"
    env = env_with_devices(8, PYTHONPATH=str(copy))
    proc = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config=configs/cifar10.py:depth=8",
                           f"--workdir={workdir}", data_flag, *RUN, "--config.num_train_steps=6",
                           f"--config.model.block={NEW_BLOCK}", "--compilation_cache="],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_local_runs([str(workdir)])
    assert run.net == f"resnet-8-{NEW_BLOCK}" and run.finished and report.paper_numbers(run) == ("-", "-")
    (diag,) = plot_gradient_flow.load_local([str(workdir)])
    assert len(diag.values(6, "grad_norm")) == 7 and len(diag.values(6, "branch_ratio")) == 3


def test_vanishing_gradients_experiment(tfds_data_dir, tmp_path):
    out = tmp_path / "vg"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "vanishing_gradients.py"), "--out", str(out),
                           "--data_dir", tfds_data_dir, "--depths", "8", "--steps", "2", "--batch_size", "16",
                           "--diagnostics_batch", "16", "--nobn_lrs", "0.1", "--kinds", "plain"],
                          cwd=REPO, env=env_with_devices(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "vanishing_gradients.json").read_text())
    rows = {r["name"]: r for r in result["runs"]}
    assert list(rows) == ["plain-8", "plain-8-nobn"]
    for r in rows.values():
        assert r["steps"] == 2 and r["stopped"] == "" and r["data"] == "5085/1017"
        for when in ("init", "trained"):
            grad = r[when]["grad_norm"]
            assert len(grad) == 7 and all(g > 0 for g in grad)  # stem + 6 convs, the classifier left out
            assert r[when]["grad_first_over_last"] == pytest.approx(grad[0] / grad[-1])
        assert r["init"]["grad_norm"] != r["trained"]["grad_norm"]
    # the runs are real runs: their metrics.jsonl holds what the table says
    logged = read_jsonl(out / "runs" / "plain-8-nobn" / "metrics.jsonl")
    assert logged[0]["step"] == 0
    assert logged[0]["diagnostics/grad_norm"][:-1] == rows["plain-8-nobn"]["init"]["grad_norm"]
    table = (out / "vanishing_gradients.md").read_text()
    assert sum(l.startswith("| ") for l in table.splitlines()) == 1 + 2 and "| plain-8-nobn | none | 0.1 |" in table
    assert (out / "vanishing_gradients.png").stat().st_size > 10_000
