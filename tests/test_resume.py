"""Preemption and faults: SIGTERM/SIGKILL then resume, other device counts, refusals, W&B offline."""
import glob
import json
import signal
import subprocess
import time

import pytest

from helpers import REPO, env_with_devices, main_command, read_jsonl, read_wandb_offline_run, run_main, without_timing

STEPS = 60
RUN = ("--config.batch_size=32", "--config.log_every=5", "--config.eval_every=20", "--config.checkpoint_every=10",
       "--config.eval_batch_size=512", f"--config.num_train_steps={STEPS}")


@pytest.fixture(scope="module")
def uninterrupted(data_flag, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_main(workdir, data_flag, *RUN)
    return read_jsonl(workdir / "metrics.jsonl")


def start_and_kill_when(workdir, data_flag, sig, ready, *extra, devices=8):
    """Starts a real run and sends `sig` once `ready(workdir)` holds; returns the process after it exits."""
    proc = subprocess.Popen(main_command(workdir, data_flag, *RUN, *extra), cwd=REPO, env=env_with_devices(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ready(workdir):
        assert proc.poll() is None, f"run ended before the signal:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "run never reached the point to interrupt"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.out, proc.err = proc.communicate(timeout=300)
    return proc


def logged_step(at_least):
    def ready(workdir):
        path = workdir / "metrics.jsonl"
        return path.exists() and any(json.loads(l)["step"] >= at_least for l in path.read_text().splitlines() if l)
    return ready


def assert_same_metrics(records, reference):
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), "duplicated or unordered steps in metrics.jsonl"
    assert without_timing(records) == without_timing(reference)  # bit-identical values


def test_sigterm_saves_and_resume_is_bit_identical(uninterrupted, data_flag, tmp_path):
    proc = start_and_kill_when(tmp_path, data_flag, signal.SIGTERM, logged_step(17))
    assert proc.returncode == 128 + signal.SIGTERM, proc.err[-3000:]
    assert "stopped by SIGTERM" in proc.out and "Re-run the same command to resume" in proc.out
    stopped_at = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert 17 <= stopped_at < STEPS
    resumed = run_main(tmp_path, data_flag, *RUN)
    assert f"resuming from step {stopped_at}" in resumed.stdout
    assert_same_metrics(read_jsonl(tmp_path / "metrics.jsonl"), uninterrupted)
    # The best test error and the training time cover both segments (they are kept in the checkpoint).
    meta = json.loads((tmp_path / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["best_test_error"] == min(r["test/error"] for r in uninterrupted if "test/error" in r)
    assert meta["train_time_s"] > 0


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_sigkill_during_saves_resumes_from_newest_complete_checkpoint(uninterrupted, data_flag, tmp_path):
    """Saving every step, a SIGKILL almost surely lands inside a save; orbax's rename-on-commit keeps it safe."""
    def three_saved(workdir):
        ckpts = workdir / "checkpoints"
        return ckpts.exists() and sum(p.name.isdigit() for p in ckpts.iterdir()) >= 3
    proc = start_and_kill_when(tmp_path, data_flag, signal.SIGKILL, three_saved, "--config.checkpoint_every=1")
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / "checkpoints"
    complete = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    # A half-written save, as a kill mid-write leaves it, must be ignored too.
    partial = ckpts / f"{complete[-1] + 1}.orbax-checkpoint-tmp"
    partial.mkdir(exist_ok=True)
    (partial / "garbage").write_text("torn")
    resumed = run_main(tmp_path, data_flag, *RUN)
    assert f"resuming from step {complete[-1]}" in resumed.stdout
    assert_same_metrics(read_jsonl(tmp_path / "metrics.jsonl"), uninterrupted)


def test_save_on_8_devices_resume_on_2(uninterrupted, data_flag, tmp_path):
    run_main(tmp_path, data_flag, *RUN[:-1], "--config.num_train_steps=20", devices=8)
    resumed = run_main(tmp_path, data_flag, *RUN, devices=2)
    assert "resuming from step 20" in resumed.stdout
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [r["step"] for r in uninterrupted]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["runtime"]["devices"] == 2
    for mine, ref in zip(records, uninterrupted):  # other device count: same maths, other summation order
        assert mine["train/loss"] == pytest.approx(ref["train/loss"], rel=2e-3, abs=2e-3)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_changed_model_field_is_refused_and_nan_stops_keeping_the_checkpoint(data_flag, tmp_path):
    run_main(tmp_path, data_flag, *RUN[:-1], "--config.num_train_steps=10")
    before = (tmp_path / "metrics.jsonl").read_text()
    refused = run_main(tmp_path, data_flag, *RUN, "--config.model.residual=false", "--config.seed=1", check=False)
    assert refused.returncode != 0
    assert "holds a run with different model.residual, seed" in refused.stderr
    assert "--config.resume=false" in refused.stderr
    diverged = run_main(tmp_path, data_flag, *RUN, "--config.learning_rate=1e30", check=False)
    assert diverged.returncode != 0
    assert "training loss is nan" in diverged.stderr.lower() and "last good checkpoint is step 10" in diverged.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["10"]
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing logged past the last good step
    fresh = run_main(tmp_path, data_flag, *RUN[:-1], "--config.num_train_steps=10", "--config.resume=false")
    assert "resuming" not in fresh.stdout and "was moved to" in fresh.stdout
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == before  # set aside, not lost


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_wandb_offline_run_holds_metrics_and_config(data_flag, tmp_path):
    env = env_with_devices(8, WANDB_MODE="offline")
    proc = subprocess.run(main_command(tmp_path, data_flag, *RUN[:-1], "--config.num_train_steps=20",
                                       "--config.wandb.group=test-sweep"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_files) == 1
    history, config, summary = read_wandb_offline_run(run_files[0])
    assert [h["_step"] for h in history] == list(range(5, 21, 5))
    ours = read_jsonl(tmp_path / "metrics.jsonl")
    assert [h["train/error"] for h in history] == [r["train/error"] for r in ours]
    assert [h["test/error"] for h in history if "test/error" in h] == [r["test/error"] for r in ours if "test/error" in r]
    assert config["model"]["depth"] == 8 and config["wandb"]["group"] == "test-sweep"
    assert summary["final/test_error"] == ours[-1]["test/error"]
