"""experiments/plot_degradation.py and experiments/report.py on real short runs (tiny nets trained once
per session on the real CIFAR-10 subset, launched with launch.sh), on synthetic paper-length runs,
on runs still in progress, and with the W&B source (a stand-in API; the real one needs network)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from resnet_jax.results import Run, load_local_runs, load_wandb_runs  # noqa: E402
from experiments import plot_degradation, report  # noqa: E402

RUNS = ["plain-8", "resnet-8", "resnet-14"]
STEPS, LOG_EVERY, EVAL_EVERY = 12, 4, 6

SWEEP_CONFIG = '''"""Three tiny runs for the experiments tests."""
from resnet_jax.config_args import load_config_module, parse_config_arg

cifar10 = load_config_module({cifar10!r})
SWEEP_NAME = "tiny-fig6"


def get_sweep(arg=None):
    parse_config_arg(arg, dict(run=""))
    return {runs!r}


def get_config(arg=None):
    a = parse_config_arg(arg, dict(run=""))
    kind, depth = a["run"].split("-")
    c = cifar10.get_config(f"depth={{depth}},residual={{kind == 'resnet'}}")
    c.wandb.group = SWEEP_NAME
    return c
'''


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tfds_data_dir):
    """plain-8, resnet-8, resnet-14: 12 steps each at batch 16, trained once with launch.sh."""
    root = tmp_path_factory.mktemp("experiments")
    config = root / "tiny_fig6.py"
    config.write_text(SWEEP_CONFIG.format(cifar10=str(REPO / "configs" / "cifar10.py"), runs=RUNS))
    workdir = root / "sweep"
    env = dict(os.environ, RESNET_JAX_PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    subprocess.run([str(REPO / "launch.sh"), str(config), "--workdir", str(workdir),
                    f"--config.data_dir={tfds_data_dir}", "--config.batch_size=16", "--config.eval_batch_size=200",
                    f"--config.num_train_steps={STEPS}", f"--config.log_every={LOG_EVERY}",
                    f"--config.eval_every={EVAL_EVERY}", f"--config.checkpoint_every={STEPS}"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    return workdir


def run_script(script, *args):
    return subprocess.run([sys.executable, str(REPO / "experiments" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def lines_by_gid(ax):
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


# ----------------------------------------------------------------------------- real short runs


def test_runs_are_read_from_the_sweep(sweep_dir):
    runs = load_local_runs([str(sweep_dir)])
    assert [r.name for r in runs] == RUNS  # plain first, then ResNets by depth
    for r in runs:
        assert r.finished and r.steps_done == STEPS
        assert [s for s, _ in r.train] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert [s for s, _ in r.test] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
        assert all(0 <= e <= 1 for _, e in r.train + r.test)
        assert r.hardware.startswith("8x cpu on ") and r.data.count("/") == 1  # + host CPU model


def test_plot_script_writes_png_and_pdf(sweep_dir, tmp_path):
    proc = run_script("plot_degradation.py", sweep_dir, "--out", tmp_path / "fig6")
    assert proc.returncode == 0, proc.stderr
    png, pdf = tmp_path / "fig6.png", tmp_path / "fig6.pdf"
    assert proc.stdout.split() == [str(png), str(pdf)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # Default output: next to the runs.
    assert run_script("plot_degradation.py", sweep_dir).returncode == 0
    assert (sweep_dir / "fig6.png").exists() and (sweep_dir / "fig6.pdf").exists()


def test_figure_has_the_papers_panels_and_curves(sweep_dir):
    runs = load_local_runs([str(sweep_dir)])
    fig = plot_degradation.plot(runs)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["plain", "ResNet"]  # no ResNet deeper than 110: no right panel
    plain, resnet = (lines_by_gid(ax) for ax in axes)
    assert set(plain) == {"plain-8/train", "plain-8/test"}
    assert set(resnet) == {"resnet-8/train", "resnet-8/test", "resnet-14/train", "resnet-14/test"}
    for lines in (plain, resnet):
        for gid, line in lines.items():
            name, kind = gid.split("/")
            if kind == "train":  # dashed, thin
                assert line.get_linestyle() == "--"
                assert list(line.get_xdata()) == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
            else:  # bold, solid
                assert line.get_linestyle() == "-" and line.get_linewidth() > lines[f"{name}/train"].get_linewidth()
                assert list(line.get_xdata()) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
            assert line.get_color() == lines[f"{name}/{'test' if kind == 'train' else 'train'}"].get_color()
            assert all(0 <= y <= 100 for y in line.get_ydata())  # error in %
    # One colour per depth, the same in every panel.
    assert plain["plain-8/test"].get_color() == resnet["resnet-8/test"].get_color()
    assert resnet["resnet-8/test"].get_color() != resnet["resnet-14/test"].get_color()
    assert axes[0].get_xlabel() == "iterations" and axes[0].get_ylabel() == "error (%)"
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend == ["resnet-8", "resnet-14", "training error", "test error"]


def test_report_has_a_row_per_run(sweep_dir, tmp_path):
    out = tmp_path / "report.md"
    proc = run_script("report.py", sweep_dir, "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert [r.split("|")[1].strip() for r in rows] == RUNS
    header = [c.strip() for c in text.splitlines()[0].strip("|").split("|")]
    assert header == list(report.COLUMNS)
    for line in rows:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["steps"] == f"{STEPS}/{STEPS}" and cells["hardware"].startswith("8x cpu on ")
        assert 0 <= float(cells["train err %"]) <= 100 and 0 <= float(cells["test err %"]) <= 100
        assert cells["paper test err %"] == "-"  # depth 8/14 nets are not in the paper
    assert "not comparable" in text
    # stdout by default
    assert run_script("report.py", sweep_dir).stdout == text


def test_run_in_progress(sweep_dir, tmp_path):
    """A run still training: partial metrics.jsonl with a half-written last line."""
    run = tmp_path / "resnet-14"
    shutil.copytree(sweep_dir / "resnet-14", run, ignore=shutil.ignore_patterns("checkpoints"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    (loaded,) = load_local_runs([str(run)])
    assert not loaded.finished and loaded.steps_done == LOG_EVERY and loaded.test == []
    fig = plot_degradation.plot([loaded])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0] == f"resnet-14 [{LOG_EVERY}/{STEPS}]"
    assert f"{LOG_EVERY}/{STEPS} (running)" in report.report([loaded])
    # A run that has not written anything yet but its directory name.
    empty = tmp_path / "sweep2" / "plain-20"
    empty.mkdir(parents=True)
    (empty / "metrics.jsonl").write_text("")
    (loaded,) = load_local_runs([str(tmp_path / "sweep2")])
    assert (loaded.residual, loaded.depth, loaded.steps_done) == (False, 20, 0)


# ----------------------------------------------------------------------------- paper-length runs


def _synthetic_run(root, name, final_train, final_test, steps=64_000):
    """metrics.jsonl + config.json shaped like a paper-length run (every 100 / 1000 iterations)."""
    kind, depth = name.rsplit("-", 1)
    run = root / name
    run.mkdir(parents=True)
    config = {"name": name, "num_train_steps": steps, "model": {"depth": int(depth), "residual": kind == "resnet"},
              "runtime": {"devices": 2, "device_kind": "NVIDIA H100 80GB HBM3", "processes": 1,
                          "num_train": 50000, "num_test": 10000}}
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(100, steps + 1, 100):
            t = step / steps
            record = {"step": step, "train/error": 0.9 * (1 - t) + final_train * t, "img_per_s": 9000.0}
            if step % 1000 == 0:
                record.update({"test/error": 0.9 * (1 - t) + final_test * t, "test/loss": 1.0})
            f.write(json.dumps(record) + "\n")


def test_paper_length_sweep_with_1202(tmp_path):
    for name, train, test in [("plain-20", 0.013, 0.096), ("plain-56", 0.054, 0.132), ("resnet-20", 0.005, 0.0875),
                              ("resnet-110", 0.001, 0.0643), ("resnet-1202", 0.001, 0.0793)]:
        _synthetic_run(tmp_path, name, train, test)
    runs = load_local_runs([str(tmp_path)])
    fig = plot_degradation.plot(runs)
    assert [ax.get_title() for ax in fig.axes] == ["plain", "ResNet", "ResNet-110 vs deeper"]
    assert set(lines_by_gid(fig.axes[2])) == {"resnet-110/train", "resnet-110/test", "resnet-1202/train",
                                              "resnet-1202/test"}
    assert set(lines_by_gid(fig.axes[1])) == {"resnet-20/train", "resnet-20/test", "resnet-110/train",
                                              "resnet-110/test"}
    assert fig.axes[0].get_xlabel() == "iter. (1e4)"
    assert max(lines_by_gid(fig.axes[0])["plain-20/test"].get_xdata()) == pytest.approx(6.4)
    assert fig.axes[0].get_ylim() == (0, 20)  # the paper's axis: final errors fit, early ones leave at the top

    text = report.report(runs)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run ")}
    assert list(rows) == ["plain-20", "plain-56", "resnet-20", "resnet-110", "resnet-1202"]
    cols = list(report.COLUMNS)
    assert rows["resnet-20"][cols.index("paper test err %")] == "8.75"
    assert rows["resnet-110"][cols.index("paper test err %")].startswith("6.43")
    assert rows["resnet-1202"][cols.index("paper test err %")] == "7.93"
    assert rows["plain-56"][cols.index("paper train err %")] == "~5.4"
    assert rows["plain-56"][cols.index("test err %")] == "13.20"
    assert rows["plain-56"][cols.index("hardware")] == "2x NVIDIA H100 80GB HBM3"
    assert rows["plain-56"][cols.index("steps")] == "64000/64000"
    assert "not comparable" not in text


# ----------------------------------------------------------------------------- W&B


class _FakeWandbRun:
    def __init__(self, name, depth, residual):
        self.name, self.url = name, f"https://wandb.ai/me/proj/runs/{name}"
        self.config = {"name": name, "num_train_steps": 20, "model": {"depth": depth, "residual": residual}}
        self.metadata = {"gpu": "NVIDIA A100", "gpu_count": 2}
        self.history = [{"_step": s, "train/error": 0.5, "img_per_s": 100.0} for s in (10, 20)]
        self.history.append({"_step": 20, "test/error": 0.4, "test/loss": 1.0})

    def scan_history(self, keys):
        return [{k: row[k] for k in keys} for row in self.history if all(k in row for k in keys)]


class _FakeApi:
    def __init__(self):
        self.calls = []

    def runs(self, path, filters):
        self.calls.append((path, filters))
        return [_FakeWandbRun("resnet-20", 20, True), _FakeWandbRun("plain-20", 20, False)]


def test_wandb_source_reads_runs_of_a_group():
    api = _FakeApi()
    runs = load_wandb_runs("me/proj", "cifar10-degradation", api=api)
    assert api.calls == [("me/proj", {"group": "cifar10-degradation"})]
    assert [r.name for r in runs] == ["plain-20", "resnet-20"]
    assert runs[0].train == [(10, 0.5), (20, 0.5)] and runs[0].test == [(20, 0.4)]
    assert runs[0].finished and runs[0].hardware == "2x NVIDIA A100"
    assert [ax.get_title() for ax in plot_degradation.plot(runs).axes] == ["plain", "ResNet"]


def test_wandb_source_without_credentials_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    for script in ("plot_degradation.py", "report.py"):
        proc = subprocess.run([sys.executable, str(REPO / "experiments" / script), "--wandb", "me/proj",
                               "--group", "g"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert "API key" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_source_is_a_clear_error(tmp_path):
    proc = run_script("report.py", tmp_path / "nope")
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = run_script("plot_degradation.py", tmp_path)
    assert proc.returncode == 2 and "neither a run directory" in proc.stderr


def test_paper_numbers_are_those_of_the_paper():
    assert report.PAPER[(True, 56)][1] == "6.97" and report.PAPER[(False, 20)] == ("~1.3", "~9.6")
    assert report.paper_numbers(Run(name="x", depth=44, residual=True)) == ("~0.2", "7.17")
    assert report.paper_numbers(Run(name="x", depth=8, residual=True)) == ("-", "-")
