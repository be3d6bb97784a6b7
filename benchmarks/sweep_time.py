"""Wall time of a whole sweep (default: the Fig. 6 sweep), one run at a time or K at once per device.

    python -m benchmarks.sweep_time                                    # Fig. 6, 64k steps, K = 1
    python -m benchmarks.sweep_time --concurrent=1,2,4 --config.model.dtype=bfloat16   # a GPU
    python -m benchmarks.sweep_time configs/cifar10_degradation.py:quick --concurrent=1,2

For every run of the sweep (with this launch's overrides: its net, batch size, dtype and
num_train_steps), `benchmarks/throughput.py` measures the real training step. With K > 1, K
processes of that net run at once on the device (each with XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/K
and on-demand allocation, as `launch.sh --runs-per-gpu K` starts them), and steps are timed only
while all K run (a file barrier), so ``step_s`` is the step time of one run among K.

The sweep's wall time is then *extrapolated* from these measured steps: each run costs
num_train_steps x step_s plus its evaluations (10,000 test images every eval_every steps, costed
as 1/3 of a training step per image: an upper bound, a measured resnet20 evaluation on CPU costs
1/9) plus compile time; runs go to K slots
round robin, as launch.sh assigns them, and the slowest slot is the wall time. It says so in its
output: measuring 64k-step runs themselves is what the sweep is for.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

from resnet_jax import cli, sweep  # noqa: E402  (light: no jax)

NUM_TEST = 10_000


def model_name(config) -> str:
    m = config.model
    kind = "preact_resnet" if m.get("preact") else ("resnet" if m.residual else "plain")
    if m.get("bottleneck") or m.get("widen_factor") or m.shortcut != "A":
        raise ValueError(f"{config.name}: only option-A basic-block CIFAR nets are benchmarked here")
    return f"{kind}{m.depth}"


def measure(model: str, batch_size: int, dtype: str, concurrent: int, steps: int, warmup: int, timeout: float) -> list[dict]:
    """throughput.py for `model` in `concurrent` processes at once; one result per process."""
    with tempfile.TemporaryDirectory(prefix="sweep_sync_") as sync:
        cmd = [sys.executable, "-m", "benchmarks.throughput", f"--model={model}", f"--batch_size={batch_size}",
               f"--dtype={dtype}", f"--steps={steps}", f"--warmup={warmup}", "--json", f"--sync={sync}:{concurrent}"]
        env = dict(os.environ)
        if concurrent > 1:
            env.update(XLA_PYTHON_CLIENT_MEM_FRACTION=sweep.memory_fraction(concurrent) or "0.75",
                       XLA_PYTHON_CLIENT_PREALLOCATE="false")
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
                 for _ in range(concurrent)]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_cost(config, step_s: float, compile_s: float) -> float:
    """Seconds for one run: its steps, its evaluations (forward of the test split), its compile."""
    steps = int(config.num_train_steps)
    evals = steps // int(config.eval_every) + (steps % int(config.eval_every) != 0)
    eval_s = NUM_TEST / int(config.batch_size) * step_s / 3
    return steps * step_s + evals * eval_s + compile_s


def makespan(costs: list[float], slots: int) -> float:
    """Wall time with runs assigned to slots round robin (launch.sh's order), each slot sequential."""
    per = [0.0] * slots
    for i, c in enumerate(costs):
        per[i % slots] += c
    return max(per)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("config", nargs="?", default="configs/cifar10_degradation.py", help="sweep config[:args]")
    p.add_argument("--concurrent", default="1", help="K values: runs at once on the device, comma-separated")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--json", action="store_true")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments {bad}; config fields are set with --config.FIELD=VALUE")
    runs, _ = sweep.list_runs(args.config)
    configs = [(r.name, sweep.resolve_config(r.config, overrides)) for r in runs]
    ks = [int(k) for k in args.concurrent.split(",")]

    # One measurement per distinct (net, batch, dtype) and K.
    measured: dict = {}
    rows = []
    for name, config in configs:
        key = (model_name(config), int(config.batch_size), str(config.model.dtype))
        for k in ks:
            if (key, k) not in measured:
                results = measure(*key, k, args.steps, args.warmup, args.timeout)
                step_s = max(r["step_s"] for r in results)
                measured[key, k] = {"step_s": step_s, "compile_s": max(r["compile_s"] for r in results),
                                    "load_avg": results[-1]["load_avg"], "device_kind": results[0]["device_kind"],
                                    "devices": results[0]["devices"]}
                print(f"# {key[0]} batch {key[1]} {key[2]}, {k} at once: {step_s:.3f} s/step "
                      f"(load {results[-1]['load_avg']})", file=sys.stderr, flush=True)
            m = measured[key, k]
            rows.append({"run": name, "model": key[0], "batch_size": key[1], "dtype": key[2], "concurrent": k,
                         "num_train_steps": int(config.num_train_steps), "step_s": m["step_s"],
                         "compile_s": m["compile_s"], "run_s": run_cost(config, m["step_s"], m["compile_s"]),
                         "load_avg": m["load_avg"]})

    totals = {}
    for k in ks:
        costs = [r["run_s"] for r in rows if r["concurrent"] == k]
        totals[k] = makespan(costs, k)
    any_m = list(measured.values())[-1]
    summary = {"sweep": args.config, "overrides": overrides, "runs": len(configs), "device_kind": any_m["device_kind"],
               "devices": any_m["devices"], "wall_s": {str(k): totals[k] for k in ks},
               "extrapolated_from_steps": args.steps, "rows": rows}
    if args.json:
        print(json.dumps(summary))
    out = sys.stderr if args.json else sys.stdout
    print(f"{'run':<12} {'net':<10} {'batch':>5} {'dtype':>8} {'steps':>6} " +
          " ".join(f"{'K=' + str(k) + ' s/step':>12} {'run time':>9}" for k in ks), file=out)
    for name, _ in configs:
        mine = {r["concurrent"]: r for r in rows if r["run"] == name}
        r1 = mine[ks[0]]
        print(f"{name:<12} {r1['model']:<10} {r1['batch_size']:>5} {r1['dtype']:>8} {r1['num_train_steps']:>6} " +
              " ".join(f"{mine[k]['step_s']:>12.4f} {_hms(mine[k]['run_s']):>9}" for k in ks), file=out)
    for k in ks:
        print(f"sweep wall time, {k} run(s) at a time per device: {_hms(totals[k])}"
              + (f" ({totals[ks[0]] / totals[k]:.2f}x vs K={ks[0]})" if k != ks[0] else ""), file=out)
    print(f"extrapolated from {args.steps} measured steps per net (not measured end to end); "
          f"{any_m['devices']}x {any_m['device_kind']}; load average at the end {any_m['load_avg']}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
