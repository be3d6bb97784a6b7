"""Running the real entry point in a subprocess, as a researcher does."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny real run on the shared CIFAR-10 subset: depth 8, batch 32.
TINY = ("--config.batch_size=32", "--config.log_every=5", "--config.eval_every=10",
        "--config.checkpoint_every=10", "--config.eval_batch_size=512")


def main_command(workdir, *overrides, config="configs/cifar10.py:depth=8"):
    return [sys.executable, "-m", "resnet_jax.main", f"--config={config}", f"--workdir={workdir}",
            "--compilation_cache=", *overrides]


def env_with_devices(devices=8, **extra):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_main(workdir, *overrides, devices=8, config="configs/cifar10.py:depth=8", timeout=600, env=None, check=True):
    proc = subprocess.run(main_command(workdir, *overrides, config=config), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or env_with_devices(devices))
    if check and proc.returncode != 0:
        raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    """Metrics minus wall-clock figures, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("img_per_s",)} for r in records]
