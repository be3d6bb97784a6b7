"""Training throughput of the real train step: step time, images/s, compile time, memory, FLOP/s.

    python -m benchmarks.throughput --model=resnet20 --batch_size=128 --json
    python -m benchmarks.throughput --model=resnet20,resnet56,plain56,resnet110 --batch_size=128
    python -m benchmarks.throughput --model=resnet20 --dtype=bfloat16 --peak_tflops=989   # GPU, bf16
    python -m benchmarks.throughput --model=resnet20 --replicas=1,4     # K vmapped runs in one program
    python -m benchmarks.throughput --model=resnet20 --eval              # + one full test-set evaluation
    python -m benchmarks.throughput --model=resnet34,plain34 --batch_size=256 --dtype=bfloat16   # ImageNet nets

What is timed is exactly what ``train.train_and_evaluate`` runs: ``step.make_train_step(config,
model, tx, mesh)`` (state replicated and donated, batch sharded over every device) on an
``data.cifar.OnDeviceData`` held on the devices (random uint8 images, 50,000 by default, like
CIFAR-10's training split), so the batch gather, the augmentation and the SGD update are in the
step, and nothing crosses from the host per step. Per configuration:

* ``lower_s`` / ``compile_s``: ``step.lower(state, data)`` and ``.compile()``; the persistent
  compilation cache is off unless ``--compilation_cache=DIR`` (so ``compile_s`` is a cold compile).
* ``step_s``: median of ``--steps`` steps after ``--warmup`` steps, each one timed to the end of
  the computation (``block_until_ready``); ``step_s_min`` / ``step_s_max`` show the spread.
* ``img_per_s``: ``batch_size * replicas / step_s``.
* ``peak_bytes``: ``device.memory_stats()['peak_bytes_in_use']`` where the backend reports it
  (GPU/TPU; None on CPU); ``temp_bytes``: XLA's temporary buffers of the compiled step.
* ``tflops``: 6 x the model's forward multiply-adds (``models.count_macs``: convs and the FC layer;
  x2 FLOPs per multiply-add, x3 for forward + two backward products) x images / ``step_s``;
  ``frac_of_peak`` against ``--peak_tflops``, or, when not given, a table of accelerator peaks by
  device kind (dense bf16; TF32 for float32 on NVIDIA) or, on CPU, a measured large matmul.
* ``--canonical_conv_grad=true|false``: force the models' canonical conv VJP on or off (auto: on for
  the CPU backend only); ``--scan=true|false`` likewise for ``nn.scan`` over the blocks.
* ``--replicas=K``: K independent runs (own data order; same net) in one program, ``img_per_s``
  counts all K: ``--pack=vmap`` vmaps the train step (convs become grouped convs), ``--pack=unroll``
  puts K copies side by side. This is how to pack several seeds of one net onto one device.

With ``--json`` one JSON object per configuration goes to stdout (the table to stderr). From Python,
``benchmark(...)`` returns that object; ``prepare`` / ``run_steps`` / ``describe`` are its three parts
(benchmarks/hardware_report.py times two prepared configurations interleaved with them).
``--sync=DIR:K`` (used by benchmarks/sweep_time.py, one configuration per process) times the steps
only while K such processes all run on the device, to measure runs sharing a GPU.

ImageNet nets (resnet18 ... resnet152, plain18 ... plain152; configs/imagenet.py, so option A
shortcuts for 18/34 layers as in Fig. 4) run ``step.train_step`` of a streamed dataset on
one fixed global batch of random uint8 224x224 images already on the devices (sharded over 'data',
as ``jax.make_array_from_process_local_data`` delivers it), i.e. the accelerator side only; compare
``img_per_s`` with what one host's input pipeline delivers (benchmarks/input_pipeline.py) to see
whether the hosts can feed the accelerators. ``--replicas`` and ``--eval`` are CIFAR-only.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from resnet_jax import cli, config_checks, data as datasets, models, optim, run_dir, sharding, step as step_lib  # noqa: E402
from resnet_jax.data import cifar, tfds_stream  # noqa: E402
from resnet_jax.config_args import load_config_module  # noqa: E402

# Dense peak TFLOP/s by device kind (substring match, first hit): (bfloat16/float16, float32).
# NVIDIA float32 is the TF32 tensor-core peak, which XLA uses for float32 convs and matmuls by
# default on Ampere and newer. Sources: the vendors' data sheets (SXM parts).
PEAK_TFLOPS = (
    ("H200", (989.0, 494.7)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.0, 494.7)),
    ("A100", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("V100", (125.0, 15.7)),
    ("TPU v6", (918.0, 918.0)),
    ("TPU v5 lite", (197.0, 197.0)),  # v5e reports "TPU v5 lite"
    ("TPU v5", (459.0, 459.0)),  # v5p reports "TPU v5" (or "TPU v5p")
    ("TPU v4", (275.0, 275.0)),
)


# ----------------------------------------------------------------------------- building the real step


def parse_model(name: str) -> dict:
    """Net fields of a registry name (resnet20, plain56, preact_resnet164, resnet34, ...) or of any
    ``resnetN`` / ``plainN`` / ``preact_resnetN`` with a valid CIFAR depth (resnet8, plain14, ...).
    ImageNet nets get ``imagenet=True``."""
    if name in models.MODEL_NAMES:
        m = models.create_model(name)
        if not isinstance(m, models.CifarResNet):
            return dict(imagenet=True, depth=m.depth, residual=m.residual)  # configs/imagenet.py's shortcut
        return dict(depth=m.depth, residual=m.residual, shortcut=m.shortcut, preact=m.preact,
                    bottleneck=m.bottleneck)
    match = re.fullmatch(r"(plain|resnet|preact_resnet)(\d+)", name)
    if not match:
        raise ValueError(f"unknown model {name!r}: use a CIFAR registry name ({', '.join(n for n in models.MODEL_NAMES)}) "
                         "or resnetN / plainN / preact_resnetN with N = 6n+2")
    kind, depth = match.group(1), int(match.group(2))
    fields = dict(depth=depth, residual=kind != "plain", shortcut="A", preact=kind == "preact_resnet", bottleneck=False)
    models.cifar_stages(depth)  # ValueError on an impossible depth
    return fields


def make_config(name: str, batch_size: int, dtype: str = "float32", scan: bool | None = None,
                canonical_conv_grad: bool | None = None):
    f = parse_model(name)
    family = "imagenet" if f.pop("imagenet", False) else "cifar10"
    arg = ",".join(f"{k}={v}" for k, v in f.items())
    config = load_config_module(REPO / "configs" / f"{family}.py").get_config(arg)
    config.batch_size = batch_size
    config.model.dtype = dtype
    config.model.scan = scan
    config.model.canonical_conv_grad = canonical_conv_grad  # None: the model's default (on for CPU only)
    return config


def num_classes(config) -> int:
    return datasets.num_classes(config.dataset, config.get("num_classes"))


def benchmark_model(name: str, dtype: str = "float32", scan: bool | None = None,
                    canonical_conv_grad: bool | None = None):
    """The model `benchmark` times for `name` (for MACs and block counts without running anything)."""
    config = make_config(name, 8, dtype, scan, canonical_conv_grad)
    return models.from_config(config.model, num_classes(config))


def uses_canonical_conv_grad(model) -> bool:
    """Whether `model` runs the canonical conv VJP (its None default means: on the CPU backend only)."""
    if model.canonical_conv_grad is None:
        return jax.default_backend() == "cpu"
    return bool(model.canonical_conv_grad)


def random_device_data(mesh, num_examples: int, batch_size: int, eval_batch_size: int = 1000,
                       num_test: int = 10_000, seed: int = 0) -> cifar.OnDeviceData:
    """Random uint8 'CIFAR' splits held on the devices as the real pipeline holds them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    test_images = rng.integers(0, 256, (num_test, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, num_test).astype(np.int32)
    return cifar.build(images, labels, test_images, test_labels, num_classes=10, batch_size=batch_size,
                       eval_batch_size=eval_batch_size, mesh=mesh)


class SyntheticStream:
    """The on-device part of a streamed dataset (what the step does to a batch the hosts decoded)."""

    def __init__(self, color_augmentation: bool):
        self.color_augmentation = color_augmentation

    def train_batch(self, inputs, rng, step):
        return tfds_stream.device_batch(inputs, rng, step, self.color_augmentation)


def random_global_batch(mesh, batch_size: int, image_size: int = 224, seed: int = 0):
    """A streamed (ImageNet) batch as the hosts deliver it: uint8 images and labels sharded over 'data'."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, batch_size).astype(np.int32)
    sharding = NamedSharding(mesh, P("data"))
    return tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in (images, labels))


def make_replicated_step(config, model, tx, mesh, data, replicas: int):
    """`replicas` runs of `step_lib.train_step` vmapped in one jitted program (state axis 0; shared data)."""
    replicated = NamedSharding(mesh, P())
    step = functools.partial(step_lib.train_step, data=data, model=model, tx=tx, config=config,
                             batch_sharding=NamedSharding(mesh, P("data")))
    return jax.jit(jax.vmap(step, in_axes=(0, None)), in_shardings=(replicated, replicated),
                   out_shardings=replicated, donate_argnums=0)


def make_unrolled_step(config, model, tx, mesh, data, replicas: int):
    """`replicas` runs of `step_lib.train_step` side by side in one jitted program (a tuple of states):
    independent subgraphs the backend may run concurrently, with ungrouped convs."""
    replicated = NamedSharding(mesh, P())
    step = functools.partial(step_lib.train_step, data=data, model=model, tx=tx, config=config,
                             batch_sharding=NamedSharding(mesh, P("data")))
    return jax.jit(lambda states, data: tuple(step(s, data) for s in states), in_shardings=(replicated, replicated),
                   out_shardings=replicated, donate_argnums=0)


def unstack_states(state, replicas: int):
    """A tuple of `replicas` copies of `state`, each with its own data order."""
    rngs = jax.random.split(state.rng, replicas)
    return tuple(jax.tree.map(lambda x: x.copy(), state).replace(rng=rngs[i]) for i in range(replicas))


def stack_states(state, replicas: int):
    """`replicas` copies of `state`, each with its own data order and augmentation (rng)."""
    rngs = jax.random.split(state.rng, replicas)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (replicas,) + x.shape).copy(), state)
    return stacked.replace(rng=rngs)


# ----------------------------------------------------------------------------- peaks


_MATMUL_PEAK: dict = {}


def measured_matmul_tflops(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Best TFLOP/s of an n x n matmul on the default device: a practical peak for CPUs."""
    if dtype not in _MATMUL_PEAK:
        a = jnp.ones((n, n), dtype)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        _MATMUL_PEAK[dtype] = 2 * n ** 3 / best / 1e12
    return _MATMUL_PEAK[dtype]


def peak_tflops(device, dtype: str, given: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device, where the number comes from)."""
    if given:
        return given, "given"
    kind = getattr(device, "device_kind", "")
    if device.platform == "cpu":
        return measured_matmul_tflops(dtype), f"measured {dtype} 2048x2048 matmul"
    for key, (half, single) in PEAK_TFLOPS:
        if key.lower() in kind.lower():
            return (single if dtype == "float32" else half), f"data sheet, {key}"
    return None, "unknown device"


# ----------------------------------------------------------------------------- one configuration


@functools.lru_cache(maxsize=4)
def _setup(name: str, batch_size: int, dtype: str, scan: bool | None, devices: tuple, num_examples: int,
           canonical_conv_grad: bool | None = None):
    """Config, model, optimizer, mesh, data on the devices and the jitted init of one net (shared by
    the configurations that differ only in replicas, so init compiles once)."""
    mesh = sharding.make_mesh(list(devices))
    config = make_config(name, batch_size, dtype, scan, canonical_conv_grad)
    config_checks.validate_config(config, mesh.size)
    classes = num_classes(config)
    model = models.from_config(config.model, classes)
    tx = optim.make_optimizer(config)
    if is_streamed(config):
        data = SyntheticStream(bool(config.get("color_augmentation")))
        inputs = random_global_batch(mesh, batch_size, config.image_size)
    else:
        data = random_device_data(mesh, num_examples, batch_size, config.eval_batch_size)
        inputs = data.train
    init = jax.jit(functools.partial(step_lib.init_state, config, model, tx, classes),
                   out_shardings=NamedSharding(mesh, P()))
    return config, model, tx, mesh, data, inputs, init


def is_streamed(config) -> bool:
    return datasets.REGISTRY[config.dataset].load is tfds_stream.load


@dataclasses.dataclass
class Prepared:
    """One configuration's compiled training step with its state and data on the devices."""

    name: str
    batch_size: int
    dtype: str
    replicas: int
    pack: str
    devices: list
    config: object
    model: object
    mesh: object
    data: object
    inputs: object    # what the step receives each step (the on-device split, or a decoded batch)
    state: object
    compiled: object
    init_s: float
    lower_s: float
    compile_s: float


def prepare(name: str, batch_size: int, dtype: str = "float32", *, devices=None, num_examples: int = 50_000,
            replicas: int = 1, pack: str = "vmap", scan: bool | None = None,
            canonical_conv_grad: bool | None = None, with_eval: bool = False) -> Prepared:
    """Builds, initialises, lowers and compiles the real training step of one configuration."""
    devices = list(devices or jax.devices())
    config, model, tx, mesh, data, inputs, init = _setup(name, batch_size, dtype, scan, tuple(devices), num_examples,
                                                         canonical_conv_grad)
    replicated = NamedSharding(mesh, P())
    if is_streamed(config) and (replicas > 1 or with_eval):
        raise ValueError(f"{name}: --replicas and --eval are for CIFAR nets")

    t = time.perf_counter()
    state = init()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    if replicas == 1:
        step_fn = step_lib.make_train_step(config, model, tx, mesh, data)
    elif pack == "vmap":
        step_fn = make_replicated_step(config, model, tx, mesh, data, replicas)
        state = jax.jit(functools.partial(stack_states, replicas=replicas), out_shardings=replicated)(state)
    elif pack == "unroll":
        step_fn = make_unrolled_step(config, model, tx, mesh, data, replicas)
        state = jax.jit(functools.partial(unstack_states, replicas=replicas), out_shardings=replicated)(state)
    else:
        raise ValueError(f"pack must be vmap or unroll, got {pack!r}")

    t0 = time.perf_counter()
    lowered = step_fn.lower(state, inputs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return Prepared(name, batch_size, dtype, replicas, pack, devices, config, model, mesh, data, inputs, state,
                    compiled, init_s, t1 - t0, t2 - t1)


def run_steps(p: Prepared, steps: int) -> list[float]:
    """Seconds of each of `steps` steps, each one timed to the end of the computation."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        p.state = p.compiled(p.state, p.inputs)
        jax.block_until_ready(p.state)
        times.append(time.perf_counter() - t)
    return times


def check_loss(p: Prepared) -> None:
    first = p.state[0] if isinstance(p.state, tuple) else p.state
    loss = float(np.asarray(jax.device_get(first.sums["loss"])).ravel()[0])
    if not np.isfinite(loss):
        raise RuntimeError(f"{p.name}: the loss is {loss}; the benchmark step is broken")


def describe(p: Prepared, times: list[float], peak: float | None = None) -> dict:
    """The result row of one configuration from its timed steps (see the module docstring)."""
    device = p.devices[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    try:
        temp = p.compiled.memory_analysis().temp_size_in_bytes
    except Exception:  # not every backend reports it
        temp = None
    macs = models.count_macs(p.model)
    images = p.batch_size * p.replicas
    step_s = statistics.median(times) if times else None
    result = {
        "model": p.name, "batch_size": p.batch_size, "dtype": p.dtype, "replicas": p.replicas,
        "pack": p.pack if p.replicas > 1 else None,
        "scan": p.model.use_scan, "canonical_conv_grad": uses_canonical_conv_grad(p.model), "devices": len(p.devices),
        "platform": device.platform, "device_kind": device.device_kind, "host": run_dir.host_description(),
        "step_s": step_s, "step_s_min": min(times) if times else None, "step_s_max": max(times) if times else None,
        "steps_timed": len(times), "img_per_s": images / step_s if step_s else None,
        "lower_s": p.lower_s, "compile_s": p.compile_s, "init_s": p.init_s,  # init_s: compile + run (0 compile if shared)
        "peak_bytes": (stats or {}).get("peak_bytes_in_use"), "temp_bytes": temp,
        "macs_per_image": macs, "flops_per_step": 6 * macs * images,
    }
    if step_s:
        per_device_peak, source = peak_tflops(device, p.dtype, peak)
        achieved = 6 * macs * images / step_s / 1e12
        result.update(tflops=achieved, peak_tflops=per_device_peak and per_device_peak * len(p.devices),
                      peak_source=source,
                      frac_of_peak=achieved / (per_device_peak * len(p.devices)) if per_device_peak else None)
    return result


def benchmark(name: str, batch_size: int, dtype: str = "float32", *, steps: int = 10, warmup: int = 3,
              devices=None, num_examples: int = 50_000, replicas: int = 1, pack: str = "vmap",
              scan: bool | None = None, peak: float | None = None, with_eval: bool = False,
              sync: tuple[str, int] | None = None, canonical_conv_grad: bool | None = None) -> dict:
    p = prepare(name, batch_size, dtype, devices=devices, num_examples=num_examples, replicas=replicas, pack=pack,
                scan=scan, canonical_conv_grad=canonical_conv_grad, with_eval=with_eval)
    times = []
    if steps > 0:
        run_steps(p, warmup)
        if sync:
            _arrive(sync, "ready")
        times = run_steps(p, steps)
        if sync:  # keep the device as busy for the others until every process has its timings
            while not _arrive(sync, "done", wait=False):
                run_steps(p, 1)
        check_loss(p)
    result = describe(p, times, peak)
    if with_eval:
        state = p.state
        one = state if replicas == 1 else state[0] if pack == "unroll" else jax.tree.map(lambda x: x[0], state)
        result.update(eval_timing(p.config, p.model, one, p.mesh, p.data, result["step_s"]))
    result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _arrive(sync: tuple[str, int], what: str, wait: bool = True, timeout: float = 3600) -> bool:
    """A file barrier between concurrent benchmark processes: mark this process at `what`, then
    (wait=True) wait until `count` processes are there. Returns whether all are."""
    folder, count = sync
    mark = os.path.join(folder, f"{what}.{os.getpid()}")
    if not os.path.exists(mark):
        open(mark, "w").close()
    deadline = time.time() + timeout
    while True:
        there = sum(n.startswith(what + ".") for n in os.listdir(folder))
        if there >= count or not wait:
            return there >= count
        if time.time() > deadline:
            raise TimeoutError(f"only {there} of {count} benchmark processes reached '{what}' in {folder}")
        time.sleep(0.05)


def eval_timing(config, model, state, mesh, data, step_s) -> dict:
    """Seconds for one evaluation of the (10,000-image) test split, as in training, and its share of
    training time at the config's eval_every."""
    evaluate = step_lib.make_evaluator(data, model, mesh)
    evaluate(state)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        evaluate(state)
        times.append(time.perf_counter() - t)
    eval_s = min(times)
    out = {"eval_s": eval_s, "eval_every": config.eval_every}
    if step_s:
        out["eval_overhead"] = eval_s / (config.eval_every * step_s)
    return out


# ----------------------------------------------------------------------------- CLI


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    head = (f"{'model':<12} {'batch':>5} {'dtype':>8} {'K':>3} {'scan':>4} {'step s (min-max)':>22} {'img/s':>8} "
            f"{'lower s':>7} {'compile s':>9} {'TFLOP/s':>8} {'of peak':>7} {'peak mem':>9}")
    lines = [head]
    for r in results:
        spread = (f"{_fmt(r['step_s'], '.3f')} ({_fmt(r['step_s_min'], '.3f')}-{_fmt(r['step_s_max'], '.3f')})"
                  if r["step_s"] else "-")
        mem = r["peak_bytes"] if r["peak_bytes"] is not None else None
        lines.append(
            f"{r['model']:<12} {r['batch_size']:>5} {r['dtype']:>8} {str(r['replicas']) + (r['pack'] or '')[:1]:>3} "
            f"{'yes' if r['scan'] else 'no':>4} "
            f"{spread:>22} {_fmt(r['img_per_s'], '.1f'):>8} {r['lower_s']:>7.2f} {r['compile_s']:>9.2f} "
            f"{_fmt(r.get('tflops'), '.4f'):>8} {_fmt(r.get('frac_of_peak') and 100 * r['frac_of_peak'], '.1f'):>6}% "
            f"{_fmt(mem and mem / 2**30, '.2f'):>7}GB")
        if "eval_s" in r:
            lines.append(f"{'':<12} eval of 10,000 test images: {r['eval_s']:.2f} s"
                         + (f" = {100 * r['eval_overhead']:.1f}% of training at eval_every={r['eval_every']}"
                            if r.get("eval_overhead") else ""))
    if any(r["replicas"] > 1 for r in results):
        lines.append("K: runs in one program (v = vmapped, u = side by side); img/s counts all of them")
    r0 = results[0] if results else {}
    lines.append(f"{r0.get('devices', '?')}x {r0.get('device_kind', '?')} ({r0.get('platform', '?')}); host "
                 f"{r0.get('host', '?')}; load average at the end {r0.get('load_avg')}")
    if r0.get("peak_source"):
        lines.append(f"peak: {_fmt(r0.get('peak_tflops'), '.3f')} TFLOP/s ({r0['peak_source']})")
    return "\n".join(lines)


def use_compilation_cache(folder: str) -> None:
    """Every compile through `folder` as a persistent cache ('' = off, so compile times are cold)."""
    if folder:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    else:
        jax.config.update("jax_enable_compilation_cache", False)


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--model", type=_csv(str), default=["resnet20"], help="comma-separated, e.g. resnet20,plain56")
    p.add_argument("--batch_size", type=_csv(int), default=[128], help="global batch, comma-separated")
    p.add_argument("--dtype", type=_csv(str), default=["float32"], help="float32 and/or bfloat16")
    p.add_argument("--replicas", type=_csv(int), default=[1], help="K runs in one program, comma-separated")
    p.add_argument("--pack", choices=("vmap", "unroll"), default="vmap",
                   help="how K > 1 runs share the program: vmapped (grouped convs) or side by side")
    p.add_argument("--scan", choices=("auto", "true", "false"), default="auto", help="nn.scan over blocks")
    p.add_argument("--canonical_conv_grad", choices=("auto", "true", "false"), default="auto",
                   help="the model's canonical conv VJP (auto: on for the CPU backend only)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (0: compile only)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
    p.add_argument("--num_examples", type=int, default=50_000, help="training images held on the devices")
    p.add_argument("--peak_tflops", type=float, default=None, help="peak per device (default: by device kind)")
    p.add_argument("--eval", action="store_true", help="also time one evaluation of 10,000 test images")
    p.add_argument("--compilation_cache", default="", help="persistent compilation cache dir ('' = off)")
    p.add_argument("--json", action="store_true", help="one JSON line per configuration on stdout")
    p.add_argument("--sync", default="", help="DIR:K: time steps only while K processes sharing DIR all run "
                   "(benchmarks/sweep_time.py --concurrent)")
    args = p.parse_args(argv)

    use_compilation_cache(args.compilation_cache)
    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    scan = {"auto": None, "true": True, "false": False}[args.scan]
    canonical = {"auto": None, "true": True, "false": False}[args.canonical_conv_grad]
    sync = (args.sync.rsplit(":", 1)[0], int(args.sync.rsplit(":", 1)[1])) if args.sync else None
    results = []
    for name in args.model:
        for batch in args.batch_size:
            for dtype in args.dtype:
                for k in args.replicas:
                    r = benchmark(name, batch, dtype, steps=args.steps, warmup=args.warmup, devices=devices,
                                  num_examples=args.num_examples, replicas=k, pack=args.pack, scan=scan,
                                  peak=args.peak_tflops, with_eval=args.eval, sync=sync,
                                  canonical_conv_grad=canonical)
                    results.append(r)
                    if args.json:
                        print(json.dumps(r), flush=True)
                    else:
                        print(f"# {name} batch {batch} {dtype} x{k}: "
                              f"{_fmt(r['step_s'], '.3f')} s/step, {_fmt(r['img_per_s'], '.1f')} img/s, "
                              f"compile {r['compile_s']:.1f} s", file=sys.stderr, flush=True)
    print(table(results), file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
