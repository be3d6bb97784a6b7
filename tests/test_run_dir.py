"""The run directory: atomic writes, reading what a run wrote, checkpoint listing, frozen fields."""
import json
import os

import pytest

from resnet_jax import run_dir


def test_atomic_writes_and_reading_back(tmp_path):
    run_dir.write_config(str(tmp_path), {"name": "resnet-8", "model": {"depth": 8}}, {"devices": 8})
    assert run_dir.read_config(str(tmp_path)) == {"name": "resnet-8", "model": {"depth": 8}, "runtime": {"devices": 8}}
    assert run_dir.saved_runtime(str(tmp_path)) == {"devices": 8}
    run_dir.write_metrics(str(tmp_path), [{"step": 5, "train/error": 0.5}, {"step": 10, "train/error": 0.4}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 15, "train/er')  # torn by a kill mid-write
    assert [r["step"] for r in run_dir.read_metrics(str(tmp_path))] == [5, 10]
    assert run_dir.last_metrics_step(str(tmp_path)) == 10
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_torn_config_is_named_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"name": "resnet-8", "model": {"dep')
    with pytest.raises(run_dir.RunDirError, match=r"config.json is damaged .*; restore it") as e:
        run_dir.read_config(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert run_dir.read_config(str(tmp_path / "nowhere")) is None


def test_checkpoint_steps_skip_saves_in_progress(tmp_path):
    for name in ("10", "20", "30.orbax-checkpoint-tmp-3", "notes"):
        os.makedirs(tmp_path / "checkpoints" / name)
    assert run_dir.checkpoint_steps(str(tmp_path)) == [10, 20]
    assert run_dir.pick_checkpoint(str(tmp_path)) == 20 and run_dir.pick_checkpoint(str(tmp_path), 10) == 10
    with pytest.raises(ValueError, match="no checkpoint for step 15; available: 10, 20"):
        run_dir.pick_checkpoint(str(tmp_path), 15)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        run_dir.pick_checkpoint(str(tmp_path / "empty"))


def test_set_aside_moves_the_previous_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    os.makedirs(tmp_path / "checkpoints" / "1")
    aside = run_dir.set_aside(str(tmp_path))
    assert sorted(os.listdir(aside)) == ["checkpoints", "metrics.jsonl"]
    assert run_dir.set_aside(str(tmp_path)) is None  # nothing left to move


def test_fields_new_since_a_run_was_saved_are_not_a_change():
    saved = {"seed": 0, "model": {"depth": 8, "residual": True}}
    now = {"seed": 0, "model": {"depth": 8, "residual": True, "norm": "batch"}, "schedule": "step"}
    assert run_dir.frozen_config_diff(saved, now) == []
    assert run_dir.frozen_config_diff(saved, {"seed": 1, "model": {"depth": 8}}) == ["model.residual", "seed"]
