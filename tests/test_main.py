"""The main job end to end on real CIFAR-10 images, and its one-line errors for bad input."""
import json

import pytest

from helpers import TINY, read_jsonl, run_main


def test_trains_on_real_images_and_writes_complete_results(tfds_data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = run_main(workdir, f"--config.data_dir={tfds_data_dir}", "--config.num_train_steps=60",
                    "--config.eval_every=30", *TINY[:-3], "--config.checkpoint_every=30", "--config.eval_batch_size=512")
    assert "step 60/60" in proc.stdout and "img/s" in proc.stdout and "ETA" in proc.stdout
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(5, 61, 5))
    for r in records:
        assert {"train/loss", "train/error", "lr", "epoch"} <= r.keys()
    evals = [r for r in records if "test/error" in r]
    assert [r["step"] for r in evals] == [30, 60] and all(0 <= r["test/error"] <= 1 for r in evals)
    # Each record averages 5 mini-batches of 32 (std ~3%): compare the first and last three records.
    first, last = (sum(r["train/error"] for r in rs) / 3 for rs in (records[:3], records[-3:]))
    assert last < first - 0.03, f"training error did not fall: {first} -> {last}"
    first_loss, last_loss = (sum(r["train/loss"] for r in rs) / 3 for rs in (records[:3], records[-3:]))
    assert last_loss < first_loss - 0.1, f"training loss did not fall: {first_loss} -> {last_loss}"
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["depth"] == 8 and config["num_train_steps"] == 60
    assert config["runtime"]["devices"] == 8 and config["runtime"]["num_test"] == 1017
    assert config["runtime"]["bn_statistics_over"] == 32
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["30", "60"]
    again = run_main(workdir, f"--config.data_dir={tfds_data_dir}", "--config.num_train_steps=60", *TINY)
    assert "already finished" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["--config.batch_size=12"], "batch_size 12 is not divisible by the 8 devices"),
    (["--config.model.depth=21"], "6n+2"),
    (["--config.dataset=mnist"], "unknown dataset 'mnist'; valid: cifar10, cifar100"),
    (["--config.no_such_field=1"], "no_such_field"),
])
def test_bad_input_exits_with_a_one_line_error(tmp_path, args, message):
    proc = run_main(tmp_path / "run", *args, check=False, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_bad_config_argument_lists_the_valid_ones(tmp_path):
    proc = run_main(tmp_path / "run", config="configs/cifar10.py:dept=56", check=False, timeout=120)
    assert proc.returncode == 3  # main.EXIT_SHARED_FAILURE: launch.sh stops a sweep on it
    assert "unknown config argument 'dept'; valid: depth, residual" in proc.stderr


def test_missing_config_file_is_a_one_line_error(tmp_path):
    proc = run_main(tmp_path / "run", config="configs/nope.py", check=False, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().endswith("error: config file not found: configs/nope.py")
