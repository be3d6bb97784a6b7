"""Compile time of the real training step against depth, cold and from the persistent cache.

    python -m benchmarks.compile_time                                  # resnet20,56,110,1202
    python -m benchmarks.compile_time --model=resnet56,resnet110 --scan=false --json

For each net, two fresh processes run ``benchmarks/throughput.py --steps=0`` (lower and compile
``step.make_train_step``, no steps) on one new, empty persistent compilation cache: the first
compiles cold and writes the cache, the second loads it, which is what a resumed or repeated run
pays. ``init_s`` is the jitted ``step.init_state`` (compiled too, so also cached the second time).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

from resnet_jax import cli

HERE = pathlib.Path(__file__).resolve().parent


def measure(model: str, batch_size: int, scan: str, cache_dir: str, timeout: float, devices: int = 0) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.throughput", f"--model={model}", f"--batch_size={batch_size}",
           "--steps=0", "--json", f"--scan={scan}", f"--compilation_cache={cache_dir}", "--num_examples=1024"]
    if devices:
        cmd.append(f"--devices={devices}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--model", default="resnet20,resnet56,resnet110,resnet1202")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--scan", choices=("auto", "true", "false"), default="auto")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    p.add_argument("--json", action="store_true", help="one JSON line per net on stdout")
    args = p.parse_args(argv)
    rows = []
    for model in args.model.split(","):
        with tempfile.TemporaryDirectory(prefix="xla_cache_") as cache:
            cold = measure(model, args.batch_size, args.scan, cache, args.timeout, args.devices)
            warm = measure(model, args.batch_size, args.scan, cache, args.timeout, args.devices)
        row = {"model": model, "batch_size": args.batch_size, "dtype": cold["dtype"], "scan": cold["scan"],
               "devices": cold["devices"], "device_kind": cold["device_kind"], "lower_s": cold["lower_s"],
               "compile_s": cold["compile_s"], "compile_s_cached": warm["compile_s"],
               "init_s": cold["init_s"], "init_s_cached": warm["init_s"], "load_avg": warm["load_avg"]}
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"# {model}: compile {row['compile_s']:.1f} s cold, {row['compile_s_cached']:.1f} s cached",
                  file=sys.stderr, flush=True)
    out = sys.stderr if args.json else sys.stdout
    print(f"{'model':<12} {'scan':>4} {'lower s':>7} {'compile s':>9} {'cached s':>8} {'init s':>6} "
          f"{'init cached s':>13}  load", file=out)
    for r in rows:
        print(f"{r['model']:<12} {'yes' if r['scan'] else 'no':>4} {r['lower_s']:>7.2f} {r['compile_s']:>9.2f} "
              f"{r['compile_s_cached']:>8.2f} {r['init_s']:>6.2f} {r['init_s_cached']:>13.2f}  {r['load_avg']}", file=out)
    if rows:
        print(f"{rows[0]['devices']}x {rows[0]['device_kind']}, batch {args.batch_size}, float32", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
