"""Nothing lost, nothing silently wrong: one test per defect found by trying bad inputs and faults.

In-process runs (``train.train_and_evaluate``) where the fault is a file or a setting; real
processes where it is a process fault (a second writer, a signal, a full disk, W&B's network).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from helpers import REPO, env_with_devices, main_command, read_jsonl, run_main
from resnet_jax import checkpointing, config_checks, data, finetune, run_dir, train, workdir_lock
from resnet_jax.config_args import load_config_module

TINY = ("--config.batch_size=32", "--config.log_every=5", "--config.eval_every=20", "--config.checkpoint_every=10",
        "--config.diagnostics_every=0", "--config.eval_batch_size=512")


def tiny(tfds_data_dir, **fields):
    c = load_config_module(REPO / "configs" / "cifar10.py").get_config("depth=8")
    c.update(dict(batch_size=32, log_every=5, eval_every=20, checkpoint_every=10, diagnostics_every=0,
                  eval_batch_size=512, num_train_steps=20, data_dir=tfds_data_dir))
    c.wandb.mode = "disabled"
    c.update(fields)
    return c


def train_in_process(workdir, config):
    return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def finished_20(tfds_data_dir, tmp_path_factory):
    """A finished 20-step run (checkpoints 10 and 20); tests work on copies of it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train_in_process(workdir, tiny(tfds_data_dir))
    return workdir


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


# ----------------------------------------------------------------------------- data lost or corrupted


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_1_a_second_process_on_a_workdir_in_use_is_refused_and_a_dead_holders_lock_is_taken_over(
        tfds_data_dir, tmp_path):
    workdir = tmp_path / "run"
    first = subprocess.Popen(main_command(workdir, f"--config.data_dir={tfds_data_dir}", *TINY,
                                          "--config.num_train_steps=100000"),
                             cwd=REPO, env=env_with_devices(8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        second = run_main(workdir, f"--config.data_dir={tfds_data_dir}", *TINY, "--config.num_train_steps=20",
                          "--config.learning_rate=0.02", check=False)
        assert second.returncode != 0
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {workdir} is in use by pid {first.pid} on host {socket.gethostname()} since")
        assert json.loads((workdir / "config.json").read_text())["learning_rate"] == 0.1  # untouched
    finally:
        first.kill()
        first.wait()
    # SIGKILL leaves the lock behind; its pid is gone, so the next run takes it over and resumes.
    assert (workdir / workdir_lock.LOCK_FILE).exists()
    resumed = run_main(workdir, f"--config.data_dir={tfds_data_dir}", *TINY, "--config.num_train_steps=20")
    assert f"took over the lock of pid {first.pid}" in resumed.stdout and "process" in resumed.stdout
    assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released at the end


def test_1_locks_of_other_hosts_are_stale_only_when_their_heartbeat_stopped(tmp_path):
    me = workdir_lock.this_process()
    other = {"host": "tpu-worker-7", "pid": 12345, "since": "yesterday", "boot_id": "x"}
    assert workdir_lock.stale_reason(other, age_s=5, me=me) is None  # alive as far as we can tell
    assert "heartbeat on host tpu-worker-7 stopped" in workdir_lock.stale_reason(other, age_s=1e6, me=me)
    assert workdir_lock.stale_reason(me, age_s=0, me=me) is None  # this very process
    rebooted = dict(me, boot_id="another-boot")
    assert "rebooted" in workdir_lock.stale_reason(rebooted, age_s=0, me=me)
    reused = dict(me, start_time="1")
    assert "now another process" in workdir_lock.stale_reason(reused, age_s=0, me=me)
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(other))
    with pytest.raises(workdir_lock.WorkdirInUse, match="in use by pid 12345 on host tpu-worker-7 since yesterday"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    old = time.time() - 2 * workdir_lock.STALE_S
    os.utime(tmp_path / workdir_lock.LOCK_FILE, (old, old))
    with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
        assert "heartbeat on host tpu-worker-7 stopped" in lock.note
        assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_2_divergence_never_saves_a_non_finite_state_and_names_a_finite_checkpoint(tfds_data_dir, tmp_path):
    # Sane for 6 steps, then lr 1e6: the weights blow up between checkpoints (every 3 steps, logs every 5).
    config = tiny(tfds_data_dir, num_train_steps=40, checkpoint_every=3, lr_boundaries=(6,), lr_decay=1e7)
    with pytest.raises(train.TrainingDiverged) as e:
        train_in_process(tmp_path, config)
    last_good = int(str(e.value).split("last good checkpoint is step ")[1].split()[0])
    assert "lower --config.learning_rate" in str(e.value)
    steps = run_dir.checkpoint_steps(str(tmp_path))
    assert steps and steps[-1] == last_good
    for s in steps:  # every kept checkpoint holds finite weights
        params, stats, _ = finetune.load_variables(str(tmp_path / "checkpoints" / str(s)))
        assert all(np.isfinite(a).all() for a in [*jax_leaves(params), *jax_leaves(stats)]), s
    diverged = run_dir.saved_runtime(str(tmp_path))["diverged"]
    assert diverged["last_good_checkpoint"] == last_good and diverged["step"] > last_good


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_3_keeping_no_checkpoint_is_refused_before_anything_is_written(tfds_data_dir, tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 1, got 0.*--config.keep_checkpoints=N"):
        train_in_process(tmp_path / "run", tiny(tfds_data_dir, keep_checkpoints=0))
    assert not (tmp_path / "run").exists()


def test_4_a_torn_record_at_the_resume_step_is_rebuilt_and_the_drop_is_reported(finished_20, tfds_data_dir, tmp_path,
                                                                                  capsys):
    workdir = copy_of(finished_20, tmp_path)
    original = read_jsonl(workdir / "metrics.jsonl")
    with open(workdir / "metrics.jsonl", "r+") as f:
        f.truncate(os.path.getsize(workdir / "metrics.jsonl") - 60)
    train_in_process(workdir, tiny(tfds_data_dir, num_train_steps=30))
    out = capsys.readouterr().out
    assert "metrics.jsonl in" in out and "dropped 1 damaged line(s) (line 4)" in out
    assert "rebuilt the record of step 20 from its checkpoint" in out
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    rebuilt, before = records[3], original[3]
    assert {k: rebuilt[k] for k in ("train/loss", "train/error", "test/error", "test/loss")} == \
        {k: before[k] for k in ("train/loss", "train/error", "test/error", "test/loss")}


# ----------------------------------------------------------------------------- silently wrong results


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_5_changing_log_every_on_resume_starts_a_fresh_interval(finished_20, tfds_data_dir, tmp_path, capsys):
    workdir = copy_of(finished_20, tmp_path)
    train_in_process(workdir, tiny(tfds_data_dir, num_train_steps=28, log_every=7))
    assert "log_every changed from 5 to 7" in capsys.readouterr().out
    every_step = tmp_path / "every-step"  # the same training, one record per step
    train_in_process(every_step, tiny(tfds_data_dir, num_train_steps=21, log_every=1, checkpoint_every=21))
    records = {r["step"]: r for r in read_jsonl(workdir / "metrics.jsonl")}
    assert sorted(records) == [5, 10, 15, 20, 21, 28]
    reference = {r["step"]: r for r in read_jsonl(every_step / "metrics.jsonl")}
    assert records[21]["train/loss"] == pytest.approx(reference[21]["train/loss"], rel=1e-6)  # step 21 alone


def test_6_the_frozen_fields_are_checked_without_config_json(finished_20, tfds_data_dir, tmp_path):
    workdir = copy_of(finished_20, tmp_path)
    os.remove(workdir / "config.json")
    config = tiny(tfds_data_dir, num_train_steps=30)
    config.model.residual = False
    with pytest.raises(train.ConfigMismatch, match="holds a run with different model.residual"):
        train_in_process(workdir, config)


@pytest.mark.parametrize("damage", ["overwrite", "checksum", "no_ocdbt", "no_metadata"])
def test_7_12_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(finished_20, tfds_data_dir, tmp_path,
                                                                         capsys, damage):
    workdir = copy_of(finished_20, tmp_path)
    state_dir = workdir / "checkpoints" / "20" / "state"
    if damage == "overwrite":  # 4 KB of the largest data file, as bit rot or a bad copy leaves it
        largest = max((p for p in (state_dir / "ocdbt.process_0" / "d").iterdir()), key=lambda p: p.stat().st_size)
        with open(largest, "r+b") as f:
            f.seek(min(8192, largest.stat().st_size - 4096))
            f.write(os.urandom(4096))
    elif damage == "checksum":  # readable, but not what was saved
        meta = workdir / "checkpoints" / "20" / "meta" / "metadata"
        record = json.loads(meta.read_text())
        meta.write_text(json.dumps(dict(record, digest="0" * 64)))
    elif damage == "no_ocdbt":
        shutil.rmtree(state_dir / "ocdbt.process_0")
    else:
        os.remove(state_dir / "_METADATA")
    train_in_process(workdir, tiny(tfds_data_dir, num_train_steps=30))
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: checkpoint 20"))
    assert "is damaged" in warning and "resuming from checkpoint 10 instead" in warning
    if damage == "checksum":
        assert "do not match the checksum" in warning
    elif damage != "overwrite":  # random bytes are caught by the reader, or by the checksum where they still decode
        assert "do not match the checksum" not in warning
    assert "resuming from step 10" in out
    assert len(list((workdir / checkpointing.DAMAGED_DIR).iterdir())) == 1  # set aside, not deleted
    assert run_dir.checkpoint_steps(str(workdir))[-2:] == [20, 30]  # retrained from 10 and saved again


# ----------------------------------------------------------------------------- one line instead of a traceback


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be positive, got 0 (--config.batch_size=...)"),
    ("eval_batch_size", -8, "eval_batch_size must be positive, got -8 (--config.eval_batch_size=...)"),
    ("learning_rate", 0.0, "learning_rate must be positive, got 0.0"),
])
def test_9_impossible_settings_fail_before_the_workdir_is_touched(tfds_data_dir, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        train_in_process(tmp_path / "run", tiny(tfds_data_dir, **{field: value}))
    assert not (tmp_path / "run").exists()


def test_14_the_default_eval_batch_on_three_devices_names_the_flag(tfds_data_dir):
    with pytest.raises(ValueError, match=r"eval_batch_size 1000 is not divisible by the 3 devices; use a multiple of "
                                         r"3 \(--config.eval_batch_size=\.\.\.\)"):
        config_checks.validate_config(tiny(tfds_data_dir, batch_size=33, eval_batch_size=1000), 3)


def test_10_a_workdir_that_is_a_file_or_under_one(tfds_data_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(run_dir.RunDirError, match="is a file, not a directory"):
        train_in_process(tmp_path / "file", tiny(tfds_data_dir))
    with pytest.raises(run_dir.RunDirError, match=r"is inside a file \(.*file\)"):
        train_in_process(tmp_path / "file" / "run", tiny(tfds_data_dir))
    assert (tmp_path / "file").read_text() == "x"


@pytest.fixture
def tmpfs(tmp_path):
    """A small file system of our own (needs root: mount); `remount(opts)` changes it."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_10_a_read_only_workdir(tfds_data_dir, tmpfs):
    (tmpfs / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(run_dir.RunDirError, match="is not writable"):
        train_in_process(tmpfs / "run", tiny(tfds_data_dir))


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_13_a_full_disk_during_a_save_is_one_line_and_the_run_resumes(tfds_data_dir, tmpfs):
    proc = run_main(tmpfs / "run", f"--config.data_dir={tfds_data_dir}", *TINY, "--config.num_train_steps=60",
                    "--config.checkpoint_every=5", "--config.keep_checkpoints=100", check=False)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "no space left on device; free some space and re-run the same command" in line, proc.stderr[-3000:]
    assert line.startswith("error: could not write checkpoint") and "Traceback" not in proc.stderr
    complete = run_dir.checkpoint_steps(str(tmpfs / "run"))
    assert complete and f"it resumes from checkpoint {complete[-1]}, the newest complete one" in line
    assert len(proc.stderr.strip().splitlines()) < 20, proc.stderr[-3000:]


def damaged_copy(tfds_data_dir, tmp_path, split, damage):
    root = tmp_path / "tfds"
    shutil.copytree(tfds_data_dir, root)
    folder = root / "cifar10" / "3.0.2"
    (shard,) = folder.glob(f"cifar10-{split}.tfrecord*")
    shard.chmod(0o644)
    if damage == "truncated":
        os.truncate(shard, shard.stat().st_size // 3)
    elif damage == "random":
        shard.write_bytes(os.urandom(shard.stat().st_size))
    else:
        shard.unlink()
    return str(root), str(folder)


@pytest.mark.parametrize("split, damage", [("train", "truncated"), ("train", "random"), ("test", "missing")])
def test_11_a_damaged_dataset_names_its_files_and_how_to_prepare_them(tfds_data_dir, tmp_path, split, damage):
    root, folder = damaged_copy(tfds_data_dir, tmp_path, split, damage)
    with pytest.raises(data.DatasetDamagedError) as e:
        train_in_process(tmp_path / "run", tiny(root))
    message = str(e.value)
    assert f"cifar10 in {folder} is damaged: reading its {split} split failed" in message
    assert f"Delete {folder} and prepare cifar10 again" in message and "\n" not in message
    if damage != "missing":
        assert f"cifar10-{split}.tfrecord-00000-of-00001" in message


@pytest.mark.parametrize("source, message", [
    ("def get_config(:\n    pass\n", "has a syntax error at line 1: invalid syntax"),
    ("x = 1\n", "defines no get_config(); a config file returns its ConfigDict from get_config"),
])
def test_13_a_config_file_that_does_not_load(tmp_path, source, message):
    path = tmp_path / "mine.py"
    path.write_text(source)
    proc = run_main(tmp_path / "run", config=str(path), check=False, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: config file {path} {message}")


def test_14_a_torn_config_json_names_the_file(finished_20, tfds_data_dir, tmp_path):
    workdir = copy_of(finished_20, tmp_path)
    (workdir / "config.json").write_text((workdir / "config.json").read_text()[:200])
    os.remove(workdir / "checkpoints" / "20" / "meta" / "metadata")  # so the check falls back to config.json
    with pytest.raises(run_dir.RunDirError, match=r"config.json is damaged \(Expecting|config.json is damaged \("):
        train_in_process(workdir, tiny(tfds_data_dir, num_train_steps=30))


# ----------------------------------------------------------------------------- signals and W&B


class _SilentServer:
    """Accepts connections and never answers: W&B's server as a stalled network shows it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()


def test_15_sigterm_before_training_starts_says_so(tfds_data_dir, tmp_path):
    server = _SilentServer()
    env = env_with_devices(8, WANDB_MODE="online", WANDB_API_KEY="x" * 40,
                           WANDB_BASE_URL=f"http://127.0.0.1:{server.port}")
    proc = subprocess.Popen(main_command(tmp_path, f"--config.data_dir={tfds_data_dir}", *TINY), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not server.conns:  # W&B is starting (after the data and the model)
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM before training started; nothing was lost" in out
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_15_wandb_online_without_network_falls_back_to_offline_at_once(tfds_data_dir, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused
    env = env_with_devices(8, WANDB_MODE="online", WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}")
    started = time.time()
    proc = subprocess.run(main_command(tmp_path, f"--config.data_dir={tfds_data_dir}", *TINY,
                                       "--config.num_train_steps=10"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("is unreachable: logging offline to") == 1
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert time.time() - started < 120  # not W&B's minute of retries on top of the run
