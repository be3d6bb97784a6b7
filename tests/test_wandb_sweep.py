"""W&B Sweeps: the YAML, the agent's expansion of its command, and a preempted agent run resuming."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from helpers import REPO, TINY, env_with_devices, read_jsonl, read_wandb_offline_run, wandb_records
from resnet_jax import sweep, wandb_sweep


def sweep_yaml(*argv, tmp_path):
    """`python -m resnet_jax.sweep wandb --output FILE ARGV`, read back."""
    out = tmp_path / "sweep.yaml"
    assert sweep.main(["wandb", "--output", str(out), *argv]) == 0
    return yaml.safe_load(out.read_text())


def agent_command(config, params, run_id, sweep_id, param_dir):
    """What `wandb agent` runs for one point, expanded by the agent's own code (wandb_agent.Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb.sdk.lib import config_util

    command = {"args": {k: {"value": v} for k, v in params.items()}, "program": config["program"], "run_id": run_id}
    param_path = os.path.join(param_dir, f"sweep-{sweep_id}", f"config-{run_id}.yaml")
    os.makedirs(os.path.dirname(param_path), exist_ok=True)
    config_util.save_config_file_from_dict(param_path, command["args"])
    variables = sweep_utils.create_sweep_command_args(command)
    variables.update(interpreter=["python"], program=[command["program"]], env=["/usr/bin/env"])
    argv = []
    for chunk in sweep_utils.create_sweep_command(list(config["command"])):
        chunk = str(chunk)
        argv += variables.get(chunk[2:-1]) or [] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    env = env_with_devices(8, WANDB_MODE="offline", WANDB_RUN_ID=run_id, WANDB_SWEEP_ID=sweep_id,
                           WANDB_SWEEP_PARAM_PATH=param_path,
                           PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return argv, env


def test_grid_yaml_is_the_sweep_configs_runs(tmp_path):
    config = sweep_yaml("--workdir", str(tmp_path / "w"), "configs/cifar10_degradation.py:quick", "--",
                        "--config.num_train_steps=100", tmp_path=tmp_path)
    assert config["method"] == "grid" and config["name"] == "cifar10-degradation-quick"
    assert config["parameters"] == {"run": {"values": ["plain-20", "plain-56", "resnet-20", "resnet-56"]}}
    assert config["project"] == "resnet-degradation" and config["metric"] == {"name": "test/error", "goal": "minimize"}
    assert config["command"][-1] == "${args}" and "--config.num_train_steps=100" in config["command"]
    argv = wandb_sweep.main_argv(*wandb_sweep.parse_agent_args(
        ["--config=configs/cifar10_degradation.py:quick", f"--workdir-root={tmp_path}", "--run=plain-56"]))
    assert argv[3:] == ["--config=configs/cifar10_degradation.py:quick,run=plain-56",
                        f"--workdir={tmp_path / 'plain-56'}"]  # the directory launch.sh gives the same run


def test_search_space_and_refusals(tmp_path):
    config = sweep_yaml("--method", "bayes", "configs/cifar10.py:depth=8", tmp_path=tmp_path)
    assert set(config["parameters"]) == {"learning_rate", "weight_decay"}
    assert config["command"][4:6] == ["--config=configs/cifar10.py:depth=8", "--workdir-root=runs/wandb/resnet-8"]
    with pytest.raises(sweep.LaunchError, match="one run: a grid has nothing"):
        wandb_sweep.sweep_spec("configs/cifar10.py:depth=8")
    with pytest.raises(sweep.LaunchError, match="declares no SEARCH_SPACE"):
        wandb_sweep.sweep_spec("configs/imagenet_degradation.py", "random")
    dotted = tmp_path / "dotted.py"
    dotted.write_text((REPO / "configs" / "cifar10.py").read_text()
                      + "\nSEARCH_SPACE = {'model.depth': {'values': [8, 14]}}\n")
    with pytest.raises(sweep.LaunchError, match="top-level config fields only"):
        wandb_sweep.sweep_spec(str(dotted), "random")
    with pytest.raises(sweep.LaunchError, match="both a sweep parameter and an override"):
        wandb_sweep.sweep_spec("configs/cifar10.py:depth=8", "random", overrides=["--config.learning_rate=0.1"])
    with pytest.raises(sweep.LaunchError, match="no field 'nope'"):
        wandb_sweep.sweep_spec("configs/cifar10_degradation.py:quick", overrides=["--config.nope=1"])
    # The workdir is a function of the parameters alone, in any order.
    a = wandb_sweep.run_workdir("root", {"weight_decay": "0.0001", "learning_rate": "0.05"})
    assert a == wandb_sweep.run_workdir("root", {"learning_rate": "0.05", "weight_decay": "0.0001"})
    assert a == os.path.join("root", "learning_rate=0.05,weight_decay=0.0001")
    assert wandb_sweep.main(["--run=plain-56"]) == 2


def wait_for_step(workdir, step, proc):
    deadline = time.time() + 300
    path = workdir / "metrics.jsonl"
    while not (path.exists() and any(json.loads(l)["step"] >= step for l in path.read_text().splitlines() if l)):
        assert proc.poll() is None, f"run ended before the signal:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "run never reached the step to interrupt"
        time.sleep(0.05)


def test_agent_run_writes_where_the_yaml_says_and_resumes_after_sigterm(tfds_data_dir, tmp_path):
    root = tmp_path / "agent-runs"
    config = sweep_yaml("--method", "random", "--workdir", str(root), "configs/cifar10.py:depth=8", "--",
                        f"--config.data_dir={tfds_data_dir}", *TINY, "--config.num_train_steps=40",
                        "--config.diagnostics_every=0", tmp_path=tmp_path)
    argv, env = agent_command(config, {"learning_rate": 0.05, "weight_decay": 0.0002}, "sweeprun01", "swp123",
                              str(tmp_path))
    workdir = root / "learning_rate=0.05,weight_decay=0.0002"
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(workdir, 15, proc)
    proc.send_signal(signal.SIGTERM)  # what `wandb agent --forward-signals` passes on
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    stopped = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 15 <= stopped < 40 and "stopped by SIGTERM" in out
    saved = json.loads((workdir / "config.json").read_text())
    assert (saved["learning_rate"], saved["weight_decay"]) == (0.05, 0.0002)
    # W&B: the agent's run id; marked preempting and ended with the exit code, so the sweep re-queues it.
    first = glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-sweeprun01.wandb"))
    assert len(first) == 1
    records = wandb_records(first[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.sweep_id) == ("sweeprun01", "swp123")
    assert "preempting" in kinds and [r.exit.exit_code for r in records if r.HasField("exit")] == [128 + signal.SIGTERM]

    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # the re-queued run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming from step {stopped}" in proc.stdout
    assert [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == list(range(5, 41, 5))
    # The sweep's parameters are single top-level config columns: no dotted twin of a nested field.
    _, wandb_config, _ = read_wandb_offline_run(first[0])
    assert wandb_config["learning_rate"] == 0.05 and wandb_config["model"]["depth"] == 8
    assert not [k for k in wandb_config if "." in k]
