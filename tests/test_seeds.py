"""Seeds: sweep configs with ``seeds=N`` (names, configs, launch.sh, SLURM, sweep plan), and a real
tiny two-net, two-seed sweep whose figure bands and report statistics are checked against numpy and
scipy computed directly on its metrics files.
"""
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
from scipy import stats

from helpers import read_jsonl, read_wandb_offline_run, read_wandb_run_record, without_timing
from test_launch import DEGRADATION, QUICK_SWEEP, commands, env_for, flag, launch, split_env

from resnet_jax import config_args, results, seed_stats, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import plot_degradation  # noqa: E402
import report  # noqa: E402

QUICK3 = [f"{net}/seed-{k}" for k in range(3) for net in QUICK_SWEEP]


# ----------------------------------------------------------------------------- configs


def test_seed_runs_are_named_net_slash_seed_seed_by_seed():
    assert sweep.list_runs(f"{DEGRADATION}:quick")[0][0].name == "plain-20"  # one seed: as before
    runs, is_sweep = sweep.list_runs(f"{DEGRADATION}:quick,seeds=3")
    assert is_sweep and [r.name for r in runs] == QUICK3
    assert runs[5].config == f"{DEGRADATION}:quick,seeds=3,run=plain-56/seed-1"
    assert len(sweep.list_runs("configs/imagenet_degradation.py:seeds=2")[0]) == 8
    assert len(sweep.list_runs("configs/cifar10_width.py:seeds=2")[0]) == 36
    assert config_args.split_seed("wrn-16-4/seed-12") == ("wrn-16-4", 12)
    assert config_args.split_seed("plain-56") == ("plain-56", None)


def test_a_seed_run_trains_with_its_seed_in_its_group():
    c = sweep.resolve_config(f"{DEGRADATION}:quick,seeds=3,run=plain-56/seed-2")
    assert (c.seed, c.name, c.wandb.group, c.wandb.job_type) == (2, "plain-56/seed-2", "cifar10-degradation-quick",
                                                                  "plain-56")
    assert (c.model.depth, c.model.residual) == (56, False)
    single = sweep.resolve_config(f"{DEGRADATION}:run=resnet-110", ["--config.seed=7"])
    assert (single.seed, single.name, single.wandb.job_type) == (7, "resnet-110", "resnet-110")
    imagenet = sweep.resolve_config("configs/imagenet_degradation.py:seeds=2,run=resnet-34/seed-1")
    assert (imagenet.seed, imagenet.model.depth, imagenet.wandb.job_type) == (1, 34, "resnet-34")
    width = sweep.resolve_config("configs/cifar10_width.py:seeds=2,run=plain-wrn-16-4/seed-1")
    assert (width.seed, width.model.widen_factor, width.model.residual) == (1, 4, False)


@pytest.mark.parametrize("spec, message", [
    (f"{DEGRADATION}:quick,seeds=0", "seeds=0: expected 1 or more"),
    (f"{DEGRADATION}:quick,seeds=3,run=plain-56/seed-3", "is not in this sweep"),
    (f"{DEGRADATION}:quick,seeds=two", "expected a number"),
])
def test_bad_seeds_are_one_line_errors(tmp_path, spec, message):
    proc = launch(spec, "--workdir", str(tmp_path / "w"), "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_dry_run_sequential_and_packed_seed_runs(tmp_path):
    workdir = tmp_path / "q3"
    cmds = commands(launch(f"{DEGRADATION}:quick,seeds=3", "--workdir", str(workdir), "--dry-run").stdout)
    assert len(cmds) == 12
    for name, argv in zip(QUICK3, cmds):
        _, argv = split_env(argv)
        assert flag(argv, "--config") == f"{DEGRADATION}:quick,seeds=3,run={name}"
        assert flag(argv, "--workdir") == str(workdir / name)
    out = launch(f"{DEGRADATION}:quick,seeds=3", "--workdir", str(workdir), "--gpus", "0,1", "--runs-per-gpu", "3",
                 "--dry-run").stdout
    gpus = [split_env(argv)[0].get("CUDA_VISIBLE_DEVICES") for argv in commands(out)]
    assert sorted(gpus) == ["0"] * 6 + ["1"] * 6


def test_slurm_array_and_plan_hold_every_seed_run(tmp_path):
    workdir = tmp_path / "q3"
    out = launch(f"{DEGRADATION}:quick,seeds=3", "--workdir", str(workdir), "--slurm", "--dry-run").stdout
    assert "--array=0-11" in out
    assert "NAMES=(" + " ".join(QUICK3) + ")" in out
    assert f"{workdir}/resnet-56/seed-2" in out
    plan = sweep.make_plan(f"{DEGRADATION}:quick,seeds=3", str(workdir))
    assert [r.name for r in plan.to_launch] == QUICK3
    assert "resnet-56/seed-2 " in sweep.plan_as_text(plan)


# ----------------------------------------------------------------------------- a real sweep over seeds

TINY_SEEDS = '''"""Two tiny nets over seeds, for the seed tests."""
from resnet_jax.config_args import load_config_module, name_sweep_run, parse_config_arg, seed_runs, split_seed

cifar10 = load_config_module({cifar10!r})
SWEEP_NAME = "tiny-seeds"


def get_sweep(arg=None):
    a = parse_config_arg(arg, dict(run="", seeds=1))
    return seed_runs(["plain-8", "resnet-8"], a["seeds"])


def get_config(arg=None):
    a = parse_config_arg(arg, dict(run="", seeds=1))
    kind, depth = split_seed(a["run"])[0].split("-")
    c = cifar10.get_config(f"depth={{depth}},residual={{kind == 'resnet'}}")
    name_sweep_run(c, a["run"], SWEEP_NAME)
    c.batch_size = 16
    c.num_train_steps = 8
    c.log_every = 2
    c.eval_every = 4
    c.checkpoint_every = 4
    c.eval_batch_size = 500
    c.diagnostics_every = 0
    return c
'''
SEED_RUNS = ["plain-8/seed-0", "resnet-8/seed-0", "plain-8/seed-1", "resnet-8/seed-1"]


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory, tfds_data_dir):
    """The tiny sweep with seeds=2 (4 real runs, W&B offline), launched by launch.sh."""
    tmp = tmp_path_factory.mktemp("seeds")
    config = tmp / "tiny_seeds.py"
    config.write_text(TINY_SEEDS.format(cifar10=str(REPO / "configs" / "cifar10.py")))
    workdir = tmp / "sweep"
    env = env_for(XLA_FLAGS="--xla_force_host_platform_device_count=2", WANDB_MODE="offline")
    args = (f"{config}:seeds=2", "--workdir", str(workdir), f"--config.data_dir={tfds_data_dir}")
    proc = launch(*args, env=env, timeout=600)
    return dict(workdir=workdir, args=args, env=env, stdout=proc.stdout)


def final_train_error(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/error" in r][-1]["train/error"]


def final_test_error(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "test/error" in r][-1]["test/error"]


def test_seed_runs_train_in_their_directories_with_their_seeds(seed_sweep):
    workdir = seed_sweep["workdir"]
    for name in SEED_RUNS:
        config = json.loads((workdir / name / "config.json").read_text())
        assert (config["name"], config["seed"], config["wandb"]["job_type"]) == (name, int(name[-1]), name[:-7])
        assert final_train_error(workdir / name) < 1.0
    # Different seeds give different runs of the same net.
    assert final_train_error(workdir / "plain-8/seed-0") != final_train_error(workdir / "plain-8/seed-1")
    # W&B: one group for the sweep, the net as job type (so W&B aggregates the seeds), the seed as a tag.
    (run_file,) = (workdir / "resnet-8/seed-1" / "wandb").glob("offline-run-*/run-*.wandb")
    record = read_wandb_run_record(run_file)
    assert (record["group"], record["job_type"], record["name"]) == ("tiny-seeds", "resnet-8", "resnet-8/seed-1")
    assert "seed=1" in record["tags"] and "residual" in record["tags"]
    _, wandb_config, _ = read_wandb_offline_run(run_file)
    assert wandb_config["seed"] == 1


def test_relaunch_skips_finished_seed_runs_and_reruns_a_lost_one_exactly(seed_sweep):
    workdir = seed_sweep["workdir"]
    out = launch(*seed_sweep["args"], "--dry-run", env=seed_sweep["env"]).stdout
    assert "all 4 run(s)" in out and "finished" in out
    lost = workdir / "plain-8/seed-1"
    before = read_jsonl(lost / "metrics.jsonl")
    shutil.rmtree(lost)
    out = launch(*seed_sweep["args"], env=seed_sweep["env"], timeout=300).stdout
    assert "# skip plain-8/seed-0" in out and "# skip resnet-8/seed-1" in out
    assert "==> plain-8/seed-1: done" in out and "1 run(s) done" in out
    assert without_timing(read_jsonl(lost / "metrics.jsonl")) == without_timing(before)  # the seed fixes the run


def test_figure_draws_mean_curves_with_std_bands(seed_sweep):
    workdir = seed_sweep["workdir"]
    runs = results.load_local_runs([str(workdir)])
    fig = plot_degradation.plot(runs, "t")
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.lines}
    bands = {c.get_gid() for ax in fig.axes for c in ax.collections}
    assert {"plain-8/train", "plain-8/test", "resnet-8/train", "resnet-8/test"} <= set(lines)
    assert {"plain-8/train-band", "plain-8/test-band", "resnet-8/test-band"} <= bands
    curves = [[(r["step"], r["train/error"]) for r in read_jsonl(workdir / f"plain-8/seed-{k}" / "metrics.jsonl")
               if "train/error" in r] for k in (0, 1)]
    expected = np.mean([[e for _, e in c] for c in curves], axis=0)
    np.testing.assert_allclose(lines["plain-8/train"].get_ydata(), 100 * expected, rtol=1e-12)
    assert "2 seeds" in " ".join(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
    assert "±1 std" in fig._suptitle.get_text()
    paths = plot_degradation.main([str(workdir), "--out", str(workdir / "fig6")])
    assert paths == 0 and (workdir / "fig6.png").stat().st_size > 10_000


def test_report_statistics_equal_a_direct_computation(seed_sweep, tmp_path):
    workdir = seed_sweep["workdir"]
    out_json = tmp_path / "r.json"
    assert report.main([str(workdir), "--out", str(tmp_path / "r.md"), "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    md = (tmp_path / "r.md").read_text()
    assert "## Over seeds" in md and "## Comparisons" in md
    nets = {n["net"]: n for n in data["nets"]}
    for net in ("plain-8", "resnet-8"):
        train = np.array([final_train_error(workdir / f"{net}/seed-{k}") for k in (0, 1)])
        test = np.array([final_test_error(workdir / f"{net}/seed-{k}") for k in (0, 1)])
        assert nets[net]["seeds"] == [0, 1]
        assert nets[net]["train_error"]["mean"] == pytest.approx(train.mean(), abs=1e-12)
        assert nets[net]["train_error"]["std"] == pytest.approx(train.std(ddof=1), abs=1e-12)
        assert nets[net]["test_error"]["best"] == pytest.approx(test.min(), abs=1e-12)
        row = f"| {net} | 2 | 8 |"
        assert row in md and f"{100 * train.min():.2f} ({100 * train.mean():.2f} ± {100 * train.std(ddof=1):.2f})" in md
    (twin,) = [c for c in data["comparisons"] if c["a"] == "plain-8"]
    d = np.array([final_train_error(workdir / f"plain-8/seed-{k}") - final_train_error(workdir / f"resnet-8/seed-{k}")
                  for k in (0, 1)])
    half = stats.t.ppf(0.975, df=1) * d.std(ddof=1) / np.sqrt(2)
    assert twin["test"] == "paired t" and twin["n"] == 2
    assert twin["difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert twin["ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-9)
    assert twin["holds"] == (d.mean() - half > 0)


# ----------------------------------------------------------------------------- statistics alone


def fake_run(net, seed, train, test, residual=True, depth=20):
    config = {"name": f"{net}/seed-{seed}", "seed": seed, "num_train_steps": 10,
              "model": {"family": "cifar", "depth": depth, "residual": residual}, "wandb": {"job_type": net}}
    return results.Run(name=config["name"], depth=depth, residual=residual, num_train_steps=10,
                       train=[(10, train)], test=[(10, test)], config=config)


def test_unpaired_seeds_use_welch_and_one_seed_says_so():
    a = seed_stats.Net([fake_run("plain-56", s, e, 0.3, False, 56) for s, e in ((0, 0.30), (1, 0.32), (2, 0.31))])
    b = seed_stats.Net([fake_run("plain-20", s, e, 0.2, False, 20) for s, e in ((3, 0.20), (4, 0.22))])
    c = seed_stats.compare(a, b, "final training error", "a worse")
    expected = stats.ttest_ind([0.30, 0.32, 0.31], [0.20, 0.22], equal_var=False)
    assert c.test == "Welch t" and c.ci == pytest.approx(tuple(expected.confidence_interval(0.95)))
    assert c.holds and c.p_value == pytest.approx(expected.pvalue / 2)
    one = seed_stats.Net([fake_run("plain-20", 0, 0.2, 0.2, False, 20)])
    c = seed_stats.compare(a, one, "final training error", "a worse")
    assert c.holds is None and c.ci is None and c.difference == pytest.approx(0.11)
    assert "needs 2+ seeds" in report.comparisons_table([c])


def test_single_seed_reports_and_figures_are_as_before():
    runs = [fake_run("plain-20", 0, 0.2, 0.25, False, 20), fake_run("resnet-20", 0, 0.1, 0.15)]
    assert report.over_seeds(runs) == ""
    fig = plot_degradation.plot(runs, "t")
    assert not [c for ax in fig.axes for c in ax.collections]
    assert "std" not in fig._suptitle.get_text()


def test_a_diverged_run_is_reported_as_diverged():
    run = fake_run("resnet-20", 0, 0.9, 0.9)
    run.config["runtime"] = {"diverged": {"step": 7, "last_good_checkpoint": 5}}
    assert "(diverged at 7)" in report.row(run)[2]
    assert report.report_json([run])["runs"][0]["diverged"]["step"] == 7
