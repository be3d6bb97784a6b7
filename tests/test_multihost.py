"""Multi-host for real: several processes on this machine as the hosts of one run (loopback, gloo)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, env_with_devices, read_jsonl, run_main

RUN = ("--config=configs/cifar10.py:depth=8", "--config.batch_size=32", "--config.log_every=5",
       "--config.eval_every=5", "--config.checkpoint_every=5", "--config.eval_batch_size=512", "--compilation_cache=")


def cluster_command(workdir, data_dir, steps, hosts=2, heartbeat_s=30):
    return [sys.executable, "-m", "resnet_jax.local_cluster", f"--hosts={hosts}", "--devices_per_host=2",
            f"--heartbeat_s={heartbeat_s}", "--", *RUN, f"--workdir={workdir}", f"--config.data_dir={data_dir}",
            f"--config.num_train_steps={steps}"]


def run_cluster(workdir, data_dir, steps, **env):
    proc = subprocess.run(cluster_command(workdir, data_dir, steps), cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env_with_devices(2, **env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_single(workdir, data_dir, steps):
    """One process with the same 4 devices as 2 hosts x 2."""
    return run_main(workdir, *RUN[1:-1], f"--config.data_dir={data_dir}", f"--config.num_train_steps={steps}",
                    config="configs/cifar10.py:depth=8", devices=4)


@pytest.fixture(scope="module")
def reference(tfds_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_host")
    run_single(workdir, tfds_data_dir, 10)
    return read_jsonl(workdir / "metrics.jsonl")


def assert_close(records, reference):
    """Same maths, cross-process all-reduce order: equal to float noise (amplified a little by SGD)."""
    assert [r["step"] for r in records] == [r["step"] for r in reference]
    for mine, ref in zip(records, reference):
        assert mine["train/loss"] == pytest.approx(ref["train/loss"], rel=2e-3)
        assert mine["test/error"] == pytest.approx(ref["test/error"], abs=0.02)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_two_hosts_match_one_host_write_once_and_resume_on_one(tfds_data_dir, tmp_path, reference):
    run_cluster(tmp_path, tfds_data_dir, 5, WANDB_MODE="offline")
    assert json.loads((tmp_path / "config.json").read_text())["runtime"]["processes"] == 2
    assert len(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))) == 1  # process 0 only
    assert sorted(os.listdir(tmp_path / "checkpoints"))[:1] == ["5"]
    resumed = run_single(tmp_path, tfds_data_dir, 10)  # saved by 2 processes, restored by 1
    assert "resuming from step 5" in resumed.stdout
    assert_close(read_jsonl(tmp_path / "metrics.jsonl"), reference)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_save_on_one_host_resume_on_two(tfds_data_dir, tmp_path, reference):
    run_single(tmp_path, tfds_data_dir, 5)
    resumed = run_cluster(tmp_path, tfds_data_dir, 10)
    assert "resuming from step 5" in resumed.stdout
    assert_close(read_jsonl(tmp_path / "metrics.jsonl"), reference)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_a_dead_host_stops_the_other_and_relaunch_resumes(tfds_data_dir, tmp_path):
    heartbeat = 5
    launcher = subprocess.Popen(cluster_command(tmp_path, tfds_data_dir, 2000, heartbeat_s=heartbeat), cwd=REPO,
                                env=env_with_devices(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "10").is_dir():
        assert launcher.poll() is None and time.time() < deadline, "cluster never reached step 10"
        time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[1]), signal.SIGKILL)  # host 1 dies
    killed_at = time.time()
    _, err = launcher.communicate(timeout=2 * heartbeat + 60)
    assert time.time() - killed_at < 2 * heartbeat + 45, "the surviving host hung"
    assert launcher.returncode != 0
    assert "host 1 of 2 exited with code -9" in err or "host 1 of 2 exited with code" in err
    leftovers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert not leftovers
    steps = [int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()]
    relaunch = run_cluster(tmp_path, tfds_data_dir, max(steps) + 5)
    assert f"resuming from step {max(steps)}" in relaunch.stdout
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # no duplicated steps
    assert records[-1]["step"] == max(steps) + 5
