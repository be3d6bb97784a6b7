"""Train (or resume) one run: flags, multi-host set-up, then train.train_and_evaluate.

    python -m resnet_jax.main --config=configs/cifar10.py:depth=56,residual=false --workdir=runs/plain-56
    python -m resnet_jax.main --config=configs/cifar10.py --workdir=runs/r20 --config.num_train_steps=2000

The config's arguments after ':' are listed in its docstring (configs/cifar10.py, configs/imagenet.py);
any config field can be overridden with --config.FIELD=VALUE (e.g. --config.model.dtype=bfloat16).
Re-running the same command resumes from the newest checkpoint. Sweeps: ./launch.sh --help.
"""
from __future__ import annotations

import logging as pylogging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything imports TensorFlow

from absl import app, flags
from ml_collections import config_flags

from resnet_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':args', e.g. configs/cifar10.py:depth=56.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, config.json and W&B files.")
flags.DEFINE_bool("verbose", False, "Also show TensorFlow's, TFDS's and Orbax's own log lines (or RESNET_JAX_VERBOSE=1).")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/resnet_jax/xla"),
                    "Persistent XLA compilation cache directory ('' to disable).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS
# The exit status of a failure that every run of a launch would share (a bad flag or config file,
# missing data, a broken install or accelerator): launch.sh stops a sweep on it instead of
# repeating the same error once per run. Other failures exit 1 and the sweep goes on.
EXIT_SHARED_FAILURE = 3


def fail(message: str, shared: bool = False):
    """Ends the process with one line on stderr; ``shared`` marks a failure every run would meet."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_SHARED_FAILURE if shared else 1)


def _initialize_distributed() -> None:
    """jax.distributed on multi-host launches: TPU pods, SLURM, or local_cluster's explicit hosts.

    A host that dies is noticed by the others within the heartbeat timeout: they stop instead
    of waiting forever in a collective.
    """
    import jax

    heartbeat = int(os.environ.get("RESNET_JAX_HEARTBEAT_S", "100"))
    if os.environ.get("RESNET_JAX_COORDINATOR"):  # set by resnet_jax.local_cluster (launch.sh --local-hosts)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes
        jax.distributed.initialize(
            coordinator_address=os.environ["RESNET_JAX_COORDINATOR"],
            num_processes=int(os.environ["RESNET_JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["RESNET_JAX_PROCESS_ID"]), heartbeat_timeout_seconds=heartbeat)
    elif os.environ.get("RESNET_JAX_DISTRIBUTED") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS") \
            or os.environ.get("SLURM_NTASKS", "1") != "1" or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)  # finds itself on TPU pods and SLURM


def _enable_compilation_cache(path: str) -> None:
    import jax

    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # read-only home: run uncached rather than fail
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (fields are set with --config.FIELD=VALUE)")
    from absl import logging

    try:
        from resnet_jax import checkpointing, console, data, train, workdir_lock
    except ImportError as e:
        fail(f"broken install ({e}); reinstall the project: python -m pip install -e .", shared=True)

    console.set_verbose(FLAGS.verbose)
    if console.verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    logging.set_verbosity(logging.INFO if console.verbose() else logging.WARNING)  # Orbax logs every file at INFO
    for handler in pylogging.getLogger().handlers:
        handler.addFilter(_quiet_disk_full)
    try:
        _initialize_distributed()
        _enable_compilation_cache(FLAGS.compilation_cache)
        _check_backend()
    except RuntimeError as e:
        fail(f"JAX cannot start its backend ({_first_line(e)}); check the accelerator and the jax install "
             "(JAX_PLATFORMS=cpu runs on the CPU)", shared=True)
    run_specific = (ValueError, FileNotFoundError, train.TrainingDiverged, workdir_lock.WorkdirInUse,
                    checkpointing.CheckpointWriteError, checkpointing.NoUsableCheckpoint)
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except data.DatasetUnavailableError as e:  # every run of a sweep reads the same data
        fail(str(e), shared=True)
    except ImportError as e:
        fail(f"broken install ({e}); reinstall the project: python -m pip install -e .", shared=True)
    except run_specific as e:
        fail(str(e))


def _check_backend() -> None:
    import jax

    jax.devices()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _quiet_disk_full(record) -> bool:
    """Orbax reports a full disk from its writer threads with long tracebacks; the run says it in one
    line (checkpointing.CheckpointWriteError), so those records are dropped."""
    text = record.getMessage() + (pylogging.Formatter().formatException(record.exc_info) if record.exc_info else "")
    return "No space left on device" not in text


def parse_flags(argv):
    """absl parsing, with a one-line error (not a traceback) for an unknown config field, a bad value
    or a config file that does not load."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.to_dict()  # config_flags defers errors of loading the file; surface them here
        return argv
    except SyntaxError as e:
        fail(f"config file {e.filename} has a syntax error at line {e.lineno}: {e.msg}", shared=True)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
        fail(_one_line(e, _config_file(argv)), shared=True)


def _config_file(argv) -> str:
    value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    return value.split(":", 1)[0]


def _one_line(e: Exception, config_file: str = "") -> str:
    while e.args and isinstance(e.args[0], Exception):  # config_dict wraps KeyError in AttributeError
        e = e.args[0]
    text = str(e.args[0] if e.args else e)
    if "Traceback (most recent call last)" in text:  # config_flags embeds the config's own error
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    message = text.replace("\n", " ").replace("  ", " ").strip().strip("'\"")
    if isinstance(e, KeyError):
        return f"unknown config field {message.strip(chr(39))} (fields are listed in the config file)"
    if isinstance(e, OSError) and "No such file" in message:
        return f"config file not found: {message.split('No such file or directory: ')[-1].strip(chr(39))}"
    if "has no attribute 'get_config" in message:
        return (f"config file {config_file} defines no get_config(); a config file returns its ConfigDict from "
                "get_config(arg=None), as configs/cifar10.py does")
    return message


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=cli.absl_flags_parser(parse_flags))


if __name__ == "__main__":
    run()
