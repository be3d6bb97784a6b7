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
            f"--compilation_cache={os.environ.get('RESNET_JAX_TEST_CACHE', '')}", *overrides]


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


def wandb_records(run_file):
    """The protobuf `Record`s of an offline W&B run file (run-<id>.wandb).

    The file is a LevelDB-style log (32 KiB blocks of crc32/length/type-framed chunks) of
    protobuf `Record`s, behind a 7-byte ':W&B' header; decoding it ourselves proves what
    `wandb sync` would upload.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = pathlib.Path(run_file).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk completes a record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_wandb_run_record(run_file):
    """What the run was started as: {group, job_type, name, tags, project}."""
    (run,) = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"][:1]
    return {"group": run.run_group, "job_type": run.job_type, "name": run.display_name, "tags": list(run.tags),
            "project": run.project}


def read_wandb_offline_run(run_file):
    """(history rows, config dict, summary dict) decoded from an offline W&B run file."""
    records = wandb_records(run_file)
    history, config, summary = [], {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
    return history, config, summary
