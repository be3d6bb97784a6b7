"""Rehearse a multi-host run on one machine: N processes as the N hosts of one run.

    python -m resnet_jax.local_cluster --hosts=2 --devices_per_host=2 -- \\
        --config=configs/cifar10.py:depth=20 --workdir=runs/rehearsal

Each process is started exactly like one host of a TPU pod or a SLURM job (``resnet_jax.main``
with ``jax.distributed`` initialised from a loopback coordinator, CPU collectives over gloo,
``devices_per_host`` fake CPU devices each), so the training loop takes the same code path as on
a real pod: one global mesh, each host feeding its own devices, process 0 alone writing metrics,
config and W&B, checkpoints written and restored by all hosts together.

If a host dies, the others notice within the heartbeat timeout and stop; this launcher then
reports which host failed and makes sure nothing is left running. Re-running resumes from the
last complete checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from resnet_jax import cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_env(base: dict, coordinator: str, hosts: int, host: int, devices_per_host: int, heartbeat_s: int) -> dict:
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update(
        XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_host}"]),
        JAX_PLATFORMS="cpu", RESNET_JAX_COORDINATOR=coordinator, RESNET_JAX_NUM_PROCESSES=str(hosts),
        RESNET_JAX_PROCESS_ID=str(host), RESNET_JAX_HEARTBEAT_S=str(heartbeat_s), PYTHONUNBUFFERED="1")
    return env


def run(hosts: int, devices_per_host: int, main_args: list[str], heartbeat_s: int = 30) -> int:
    """Runs the hosts to completion; returns 0, or the exit code of the first host that failed."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "resnet_jax.main", *main_args],
                              env=host_env(os.environ, coordinator, hosts, h, devices_per_host, heartbeat_s))
             for h in range(hosts)]

    def forward(signum, frame):  # preemption reaches every host, as on a real pod
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(h, c) for h, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                host, code = failed[0]
                print(f"local_cluster: host {host} of {hosts} exited with code {code}; the other hosts stop "
                      f"within the {heartbeat_s}s heartbeat timeout. Re-run to resume from the last "
                      "complete checkpoint.", file=sys.stderr, flush=True)
                deadline = time.time() + 2 * heartbeat_s + 30
                while time.time() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(0.2)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__,
                                     usage="python -m resnet_jax.local_cluster --hosts N [options] -- MAIN_ARGS...")
    parser.add_argument("--hosts", type=int, required=True, help="number of processes (hosts)")
    parser.add_argument("--devices_per_host", type=int, default=2, help="fake CPU devices per host")
    parser.add_argument("--heartbeat_s", type=int, default=30, help="seconds before a dead host is noticed")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="arguments of resnet_jax.main, after --")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if args.hosts < 1 or args.devices_per_host < 1:
        parser.error("--hosts and --devices_per_host must be at least 1")
    if not any(a.startswith("--workdir") for a in main_args):
        parser.error("pass resnet_jax.main's arguments after --, at least --config=... --workdir=...")
    return run(args.hosts, args.devices_per_host, main_args, args.heartbeat_s)


if __name__ == "__main__":
    sys.exit(main())
