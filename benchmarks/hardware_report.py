"""Measure any machine in one command: step, compile, packing, scan/VJP, Fig. 6 wall time, input pipeline.

    python -m benchmarks.hardware_report --budget_s=480                    # this machine, about 8 minutes
    python -m benchmarks.hardware_report --budget_s=1800 --out=benchmarks/results/h100-sxm/
    python -m benchmarks.hardware_report --budget_s=90 --batch_size=8 --steps=1 --warmup=0 \\
        --num_examples=256 --devices=1 --out=/tmp/smoke                      # a quick smoke run
    python -m benchmarks.hardware_report --render=benchmarks/results/cpu/hardware_report.json   # Markdown again

It finds the backend (CPU, GPU or TPU), probes it with one real resnet20 training step (which is
also the first result), plans from that probe which cases fit into ``--budget_s`` (skipping the
rest, each with its reason), and runs every case in its own subprocess with a timeout, so that a
hung or crashing case is recorded as failed and the budget holds. The cases reach the training step
only through the other benchmarks: ``benchmarks.throughput`` (step time, img/s, memory, FLOP/s;
``--replicas --pack=vmap``; ``--scan``; ``--canonical_conv_grad``), ``benchmarks.compile_time``
(cold and cached compiles) and ``benchmarks.input_pipeline`` (on ``benchmarks.jpeg_dataset``):

* step time and img/s: resnet20/56, plain56, resnet110 at ``--batch_size`` (128) in float32 and
  bfloat16; resnet18/34/50 at 256 in bfloat16 (GPU/TPU only); % of the device's peak (the table
  DEVICE_PEAKS below, or a measured matmul on CPU) and peak device memory;
* compile time of resnet20/110/1202, cold (a fresh persistent cache) and cached (a second process);
* packing: K concurrent processes of resnet20 and resnet56 on one device (the memory fraction of
  ``launch.sh --runs-per-gpu K``, with CUDA MPS when ``nvidia-cuda-mps-control`` is there) and K
  vmapped replicas in one program: aggregate img/s and the gain over one run;
* scan vs unrolled (resnet56, resnet110) and the canonical conv VJP on vs off (resnet20/56/110),
  with a recommendation for ``models.SCAN_AUTO_MAX_UNROLLED_BLOCKS`` and the VJP on this backend;
* the Fig. 6 sweep's projected wall time (9 nets x 64k iterations), sequential and with the best
  packing measured (nets not measured are interpolated in multiply-adds, and marked so);
* the ImageNet input pipeline's images/s on this host next to what the step consumes.

It writes ``hardware_report.json`` and ``hardware_report.md`` to ``--out`` (default
``benchmarks/results/<device kind>/``). The parent process never initialises a JAX backend: on a
GPU that would hold device memory the cases need.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jaxlib

from benchmarks import compile_time, sweep_time, throughput
from resnet_jax import cli
from resnet_jax import models, sweep

IMPORTED_AT = time.time()  # a worker's start-up cost (interpreter + imports) is measured up to here

REPO = pathlib.Path(__file__).resolve().parents[1]
FIG6_SWEEP = REPO / "configs" / "cifar10_degradation.py"

PROBE_MODEL = "resnet20"
CIFAR_STEP_NETS = ("resnet20", "resnet56", "plain56", "resnet110")
IMAGENET_STEP_NETS = ("resnet50", "resnet34", "resnet18")
CPU_IMAGENET_NET = "resnet18"  # on CPU: what the step consumes, at a small batch
COMPILE_NETS = ("resnet20", "resnet110", "resnet1202")
PACK_NETS = ("resnet20", "resnet56")
SCAN_NETS = ("resnet56", "resnet110")
VJP_NETS = ("resnet20", "resnet56", "resnet110")
FIG6_NETS = ("plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
SECTIONS = ("step", "compile", "ablation", "imagenet", "input", "packing")
DTYPES = ("float32", "bfloat16")

# ----------------------------------------------------------------------------- peaks


@dataclasses.dataclass(frozen=True)
class PeakSpec:
    """Dense (no sparsity) peak TFLOP/s of one JAX device of a kind.

    bf16: bfloat16 on the tensor cores / MXU. f32_default: float32 at JAX's default precision,
    which on NVIDIA Ampere and newer runs convs and matmuls as TF32 on the tensor cores and on TPUs
    as one bfloat16 MXU pass. fp32: full float32 without tensor cores (None where not published).
    """

    match: str
    bf16: float | None
    f32_default: float | None
    fp32: float | None
    source: str


_NV = "NVIDIA {} data sheet; tensor figures there are 'with sparsity', dense is half"
# Substring of jax's device_kind, first match wins (so H100 PCIe/NVL come before H100).
DEVICE_PEAKS = (
    PeakSpec("H200 NVL", 835.5, 417.5, 60.0, _NV.format("H200 NVL")),
    PeakSpec("H200", 989.4, 494.7, 67.0, _NV.format("H200 SXM")),
    PeakSpec("H100 NVL", 835.5, 417.5, 60.0, _NV.format("H100 NVL")),
    PeakSpec("H100 PCIe", 756.5, 378.0, 51.0, _NV.format("H100 PCIe")),
    PeakSpec("H100", 989.4, 494.7, 67.0, _NV.format("H100 SXM")),
    PeakSpec("A100", 312.0, 156.0, 19.5, "NVIDIA A100 data sheet (dense)"),
    PeakSpec("L40S", 362.1, 183.0, 91.6, _NV.format("L40S")),
    PeakSpec("A10G", None, None, None, "AWS A10G: not in NVIDIA's data sheets; pass --peak_tflops"),
    PeakSpec("A10", 125.0, 62.5, 31.2, _NV.format("A10")),
    PeakSpec("L4", 121.0, 60.0, 30.3, _NV.format("L4")),
    PeakSpec("V100", None, 15.7, 15.7, "NVIDIA V100 SXM2 data sheet; Volta has no bf16 or TF32 tensor cores"),
    PeakSpec("TPU v6 lite", 918.0, 918.0, None, "Google Cloud TPU v6e (Trillium) docs, per chip"),
    PeakSpec("TPU v5 lite", 197.0, 197.0, None, "Google Cloud TPU v5e docs, per chip"),
    PeakSpec("TPU v5", 459.0, 459.0, None, "Google Cloud TPU v5p docs, per chip"),
    PeakSpec("TPU v4", 275.0, 275.0, None, "Google Cloud TPU v4 docs, per chip (one JAX device)"),
    PeakSpec("TPU v3", 61.5, 61.5, None, "Google Cloud TPU v3 docs: 123 per chip, 2 JAX devices (cores)"),
)


def find_peak_spec(device_kind: str) -> PeakSpec | None:
    for spec in DEVICE_PEAKS:
        if spec.match.lower() in device_kind.lower():
            return spec
    return None


def device_peak(platform_name: str, device_kind: str, dtype: str, cpu_peaks: dict,
                given: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device for `dtype`, its source). float32 on GPUs is compared with the
    full-precision (non-tensor) peak where the data sheet gives one, as the task asks, and the
    TF32 figure is reported beside it (see f32_default_peak)."""
    if given:
        return given, "given (--peak_tflops)"
    if platform_name == "cpu":
        peak = cpu_peaks.get(dtype)
        return peak, f"measured {dtype} 2048x2048 matmul (benchmarks.throughput)" if peak else "not measured"
    spec = find_peak_spec(device_kind)
    if spec is None:
        return None, f"unknown device kind {device_kind!r}: pass --peak_tflops"
    if dtype == "bfloat16":
        return spec.bf16, f"{spec.source}: bf16 dense"
    if spec.fp32 is not None:
        return spec.fp32, f"{spec.source}: fp32 (non-tensor)"
    return spec.f32_default, f"{spec.source}: float32 at default precision"


def f32_default_peak(platform_name: str, device_kind: str) -> float | None:
    """Peak of float32 at JAX's default precision (TF32 on NVIDIA Ampere+, a bf16 pass on TPU)."""
    if platform_name == "cpu":
        return None
    spec = find_peak_spec(device_kind)
    return spec.f32_default if spec else None


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure and how long each measurement runs (per-backend defaults filled in)."""

    budget_s: float = 480.0
    reserve_s: float = 5.0
    batch_size: int = 128
    imagenet_batch_size: int = 256
    cpu_imagenet_batch_size: int = 16
    steps: int = 3
    warmup: int = 1
    pair_steps: int = 5
    num_examples: int = 50_000
    devices: int = 1
    concurrent: tuple[int, ...] = (1, 2, 4, 8)
    vmap: tuple[int, ...] = (1, 4, 8)
    pack_dtype: str = "float32"
    ablation_dtype: str = "float32"
    input_images: int = 256
    input_batch_size: int = 32
    input_batches: int = 10
    input_image_size: int = 224
    sections: tuple[str, ...] = SECTIONS
    mps: str = "auto"
    peak_tflops: float | None = None


def default_steps(platform_name: str, steps: int | None, warmup: int | None) -> tuple[int, int]:
    """Timed and warm-up steps: few on a CPU (a step takes seconds), more on an accelerator."""
    cpu = platform_name == "cpu"
    return (steps if steps is not None else 3 if cpu else 20), (warmup if warmup is not None else 1 if cpu else 5)


def resolve_settings(args: argparse.Namespace, platform_name: str) -> Settings:
    cpu = platform_name == "cpu"
    steps, warmup = default_steps(platform_name, args.steps, args.warmup)

    def pick(value, on_cpu, on_accelerator):
        return value if value is not None else on_cpu if cpu else on_accelerator

    return Settings(
        budget_s=args.budget_s, reserve_s=args.reserve_s if args.reserve_s is not None else max(5.0, 0.02 * args.budget_s),
        batch_size=args.batch_size, imagenet_batch_size=args.imagenet_batch_size,
        cpu_imagenet_batch_size=args.cpu_imagenet_batch_size, steps=steps, warmup=warmup,
        pair_steps=args.pair_steps if args.pair_steps is not None else max(steps, 5),
        num_examples=args.num_examples, devices=args.devices, concurrent=tuple(args.concurrent),
        vmap=tuple(args.vmap), pack_dtype=args.pack_dtype, ablation_dtype=args.ablation_dtype,
        input_images=pick(args.input_images, 256, 2000), input_batch_size=pick(args.input_batch_size, 32, 256),
        input_batches=pick(args.input_batches, 10, 20), input_image_size=args.input_image_size,
        sections=tuple(args.sections), mps=args.mps, peak_tflops=args.peak_tflops)


# ----------------------------------------------------------------------------- probe


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one quick real step of resnet20 says about this machine: the planner's unit costs."""

    platform: str
    device_kind: str
    devices: int
    cpu_count: int
    overhead_s: float  # a case process's cost outside init/compile/steps: start-up, imports, data
    init_s: float  # jitted init_state, compile + run
    compile_s: float  # lower + compile of the training step
    step_s: float
    batch_size: int
    nets: dict  # name -> macs, stages, blocks, convs_per_block, auto_scan, imagenet
    model: str = PROBE_MODEL

    @classmethod
    def from_worker(cls, worker: dict) -> Probe:
        r = worker["result"]
        accounted = r["init_s"] + r["lower_s"] + r["compile_s"] + (worker["steps"] + worker["warmup"]) * r["step_s"]
        overhead = worker["startup_s"] + max(worker["bench_s"] - accounted, 0.0)
        return cls(platform=r["platform"], device_kind=r["device_kind"], devices=r["devices"],
                   cpu_count=worker["machine"]["cpu_count"], overhead_s=overhead, init_s=r["init_s"],
                   compile_s=r["lower_s"] + r["compile_s"], step_s=r["step_s"], batch_size=r["batch_size"],
                   nets=worker["nets"], model=r["model"])


def net_info(name: str) -> dict:
    """Multiply-adds and block structure of a benchmark net: enough to scale the probe's costs."""
    model = throughput.benchmark_model(name)
    stages = [int(n) for n in model.stages()]
    return {"macs": int(models.count_macs(model)), "stages": stages, "blocks": sum(stages),
            "convs_per_block": 3 if model.bottleneck else 2, "auto_scan": bool(model.use_scan),
            "imagenet": isinstance(model, models.ImageNetResNet)}


def machine_info(devices: list) -> dict:
    """Versions and device facts for the report's header (in the worker: it needs a backend)."""
    device = devices[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):  # not every backend implements it
        stats = None
    return {"platform": device.platform, "device_kind": device.device_kind, "device_count": len(devices),
            "devices_present": jax.device_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "platform_version": getattr(device.client, "platform_version", None),
            "memory_stats": bool(stats), "bytes_limit": (stats or {}).get("bytes_limit"),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def probe_worker(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: device facts, net sizes, CPU matmul peaks and one real resnet20 step."""
    throughput.use_compilation_cache(args.compilation_cache)
    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    device = devices[0]
    steps, warmup = default_steps(device.platform, args.steps, args.warmup)
    start = time.perf_counter()
    nets = {name: net_info(name) for name in probe_nets()}
    nets_s = time.perf_counter() - start
    cpu_peaks = {dt: throughput.measured_matmul_tflops(dt) for dt in DTYPES} if device.platform == "cpu" else {}
    peaks_s = time.perf_counter() - start - nets_s
    start = time.perf_counter()
    result = throughput.benchmark(PROBE_MODEL, args.batch_size, "float32", steps=steps, warmup=warmup,
                                  devices=devices, num_examples=args.num_examples,
                                  peak=args.peak_tflops or cpu_peaks.get("float32"))
    machine = {**machine_info(devices), "host_cpu": result["host"]}
    return {"machine": machine, "nets": nets, "cpu_peaks": cpu_peaks, "result": result,
            "steps": steps, "warmup": warmup, "bench_s": time.perf_counter() - start, "nets_s": nets_s,
            "peaks_s": peaks_s,
            "imported_at": IMPORTED_AT}


def interleaved_times(a, b, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Step times of two prepared configurations, alternated A B, B A, ... so that a load that comes
    and goes on a shared machine hits both alike (their ratio is what is compared)."""
    throughput.run_steps(a, warmup)
    throughput.run_steps(b, warmup)
    times_a, times_b = [], []
    for i in range(steps):
        for p in ((a, b) if i % 2 == 0 else (b, a)):
            (times_a if p is a else times_b).extend(throughput.run_steps(p, 1))
    return times_a, times_b


def flag(text: str) -> bool | None:
    return {"auto": None, "true": True, "false": False}[text]


def pair_worker(args: argparse.Namespace) -> dict:
    """Runs in a subprocess: the model's default step (A) and one with `--scan`/`--canonical_conv_grad`
    flipped (B), compiled side by side and timed interleaved."""
    throughput.use_compilation_cache(args.compilation_cache)
    devices = jax.devices()[:args.devices] if args.devices else jax.devices()
    steps, warmup = default_steps(devices[0].platform, args.steps, args.warmup)
    common = {"devices": devices, "num_examples": args.num_examples}
    a = throughput.prepare(args.model, args.batch_size, args.dtype, **common)
    b = throughput.prepare(args.model, args.batch_size, args.dtype, scan=flag(args.scan),
                           canonical_conv_grad=flag(args.canonical_conv_grad), **common)
    times_a, times_b = interleaved_times(a, b, steps, warmup)
    for p in (a, b):
        throughput.check_loss(p)
    return {"a": throughput.describe(a, times_a, args.peak_tflops), "b": throughput.describe(b, times_b, args.peak_tflops),
            "ratio_b_over_a": statistics.median(tb / ta for ta, tb in zip(times_a, times_b, strict=True)),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def probe_nets() -> tuple[str, ...]:
    return tuple(dict.fromkeys(CIFAR_STEP_NETS + IMAGENET_STEP_NETS + (CPU_IMAGENET_NET,) + COMPILE_NETS + FIG6_NETS))


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement, run in its own subprocess(es). `requires`: keys of cases it is compared with."""

    key: str
    kind: str  # step | compile | concurrent | vmap | input
    section: str
    model: str = ""
    batch_size: int = 0
    dtype: str = "float32"
    scan: str = "auto"  # auto | true | false
    vjp: str = "auto"  # canonical_conv_grad: auto | true | false
    k: int = 1
    requires: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()  # () = every backend
    why: str = ""


def step_key(model: str, dtype: str, batch: int, scan: str = "auto", vjp: str = "auto") -> str:
    key = f"step/{model}/{dtype}/b{batch}"
    if scan != "auto":
        key += "/scan" if scan == "true" else "/unrolled"
    if vjp != "auto":
        key += "/vjp-on" if vjp == "true" else "/vjp-off"
    return key


def step_case(section: str, model: str, dtype: str, batch: int, scan: str = "auto", vjp: str = "auto",
              requires: tuple[str, ...] = (), backends: tuple[str, ...] = (), why: str = "") -> Case:
    return Case(step_key(model, dtype, batch, scan, vjp), "step", section, model, batch, dtype, scan, vjp,
                requires=requires, backends=backends, why=why)


def flipped(flag: bool) -> str:
    return "false" if flag else "true"


def build_cases(settings: Settings, probe: Probe) -> list[Case]:
    """Every case, most valuable first (the planner keeps this order and drops what does not fit);
    a case comes after the cases it is compared with.

    The order: the float32 steps of the Fig. 6 nets; then on a CPU the scan/VJP pairs, compile times and
    K concurrent runs (a few cores cannot gain much from packing), on an accelerator packing first (the
    sweep's lever there), then the pairs and compile times; ImageNet steps and the input pipeline;
    bfloat16 steps; then the costly rest: the scanned net without its CPU-default VJP (~10x slower on
    CPU) and vmapped replicas (grouped convs, slow on CPU)."""
    b, cpu = settings.batch_size, probe.platform == "cpu"
    abl, pd = settings.ablation_dtype, settings.pack_dtype
    steps = ("step", [step_case("step", m, "float32", b) for m in CIFAR_STEP_NETS])
    packing = ("packing", [step_case("packing", m, pd, b) for m in PACK_NETS] + [
        Case(f"concurrent/{m}/K{k}", "concurrent", "packing", m, b, pd, k=k, requires=(step_key(m, pd, b),))
        for k in sorted(set(settings.concurrent) - {1}) for m in PACK_NETS])
    scan_pairs = [Case(f"pair/{m}/scan", "pair", "ablation", m, b, abl, scan=flipped(probe.nets[m]["auto_scan"]))
                  for m in SCAN_NETS]
    vjp_pairs = [Case(f"pair/{m}/vjp", "pair", "ablation", m, b, abl, vjp=flipped(cpu))  # against the default
                 for m in VJP_NETS]
    costly_on_cpu = [c for c in vjp_pairs if cpu and probe.nets[c.model]["auto_scan"]]
    cheap = [c for c in vjp_pairs if c not in costly_on_cpu]
    ablation = ("ablation", cheap[:1] + scan_pairs[:1] + cheap[1:] + scan_pairs[1:])
    compiles = ("compile", [Case(f"compile/{m}", "compile", "compile", m, b) for m in COMPILE_NETS])
    groups = [steps, ablation, compiles, packing] if cpu else [steps, packing, ablation, compiles]
    groups.append(("imagenet", [step_case("imagenet", m, "bfloat16", settings.imagenet_batch_size, backends=("gpu", "tpu"),
                                          why="ImageNet nets at batch 256 are for GPUs/TPUs")
                                for m in IMAGENET_STEP_NETS] + [
        step_case("imagenet", CPU_IMAGENET_NET, "float32", settings.cpu_imagenet_batch_size, backends=("cpu",),
                  why="on an accelerator the resnet50/34 bf16 steps are what the input pipeline feeds")]))
    groups.append(("input", [Case("input_pipeline", "input", "input")]))
    groups.append(("step", [step_case("step", m, "bfloat16", b) for m in CIFAR_STEP_NETS]))
    groups.append(("ablation", costly_on_cpu))
    groups.append(("packing", packing[1][:len(PACK_NETS)] + [
        Case(f"vmap/{m}/K{k}", "vmap", "packing", m, b, pd, k=k, requires=(step_key(m, pd, b),))
        for k in sorted(set(settings.vmap) - {1}) for m in PACK_NETS]))
    cases = [c for section, group in groups if section in settings.sections for c in group]
    first = {}
    for c in cases:  # a case wanted by several sections runs once, where it first comes
        first.setdefault(c.key, c)
    return list(first.values())


# ----------------------------------------------------------------------------- cost model

# Slow paths known from earlier measurements on XLA CPU (docs/performance.md):
CPU_SCANNED_WITHOUT_VJP = 10.0  # the scanned backward without the canonical conv VJP: ~10x slower
CPU_UNROLLED_WITHOUT_VJP = 1.5  # unrolled without it: the fused-transpose recomputation comes back
CPU_VMAP_PER_REPLICA = 3.5  # vmapped replicas become grouped convs: K=2 gave 0.30x on CPU
CACHED_COMPILE_SHARE = 0.3  # a cached compile + init costs about this share of a cold one
INPUT_FIXED_S = 15.0  # start-up of TensorFlow/TFDS, dataset statistics
INPUT_BUILD_S_PER_IMAGE = 0.04  # writing the synthetic ImageNet-size JPEG dataset, once
INPUT_READ_S_PER_IMAGE = 0.01  # decode + crop + resize per image, one core


def resolved_scan(case: Case, probe: Probe) -> bool:
    return probe.nets[case.model]["auto_scan"] if case.scan == "auto" else case.scan == "true"


def resolved_vjp(case: Case, probe: Probe) -> bool:
    return probe.platform == "cpu" if case.vjp == "auto" else case.vjp == "true"


def compiled_convs(net: dict, scan: bool) -> int:
    """Convolutions XLA compiles: every block unrolled, or per stage the first block plus one scanned body."""
    blocks = 2 * len(net["stages"]) if scan else net["blocks"]
    return 1 + blocks * net["convs_per_block"]


def compile_units(convs: int) -> float:
    """Relative compile (and init) cost of a program with `convs` convolutions: a constant part, a
    linear part and a superlinear one (XLA CPU, unrolled: resnet56 1.8x resnet20, resnet110 2-4x,
    depth 218 ~10x; docs/performance.md)."""
    return 30 + convs + convs * convs / 200


def compile_scale(probe: Probe, model: str, scan: bool) -> float:
    """Compile (and init) time of `model` relative to the probe's net; a scanned net costs about
    1.5x its few compiled convs (measured: scanned nets compile in flat time, ~1.4x resnet20)."""
    probe_net = probe.nets[probe.model]
    ref = compile_units(compiled_convs(probe_net, probe_net["auto_scan"]))
    return compile_units(compiled_convs(probe.nets[model], scan)) / ref * (1.5 if scan else 1.0)


def step_estimate(probe: Probe, case: Case) -> float:
    """Seconds per step of one run: the probe's step scaled by multiply-adds x batch, times the known
    CPU slow paths. dtype is not credited (bf16 may be faster): estimates should err long."""
    work = probe.nets[case.model]["macs"] * case.batch_size
    step = probe.step_s * work / (probe.nets[probe.model]["macs"] * probe.batch_size)
    if probe.platform == "cpu" and not resolved_vjp(case, probe):
        step *= CPU_SCANNED_WITHOUT_VJP if resolved_scan(case, probe) else CPU_UNROLLED_WITHOUT_VJP
    return step


def estimate_s(case: Case, probe: Probe, settings: Settings, cached: frozenset = frozenset()) -> float:
    """Wall seconds a case is expected to take, from the probe's unit costs (before correction).
    `cached`: keys of cases run (or planned) before, whose programs are then in the shared cache."""
    n_steps = settings.steps + settings.warmup
    if case.kind == "input":
        images = settings.input_images
        read = (settings.input_batches + 2) * settings.input_batch_size + 200  # + warm-up + dataset stats
        return INPUT_FIXED_S + images * INPUT_BUILD_S_PER_IMAGE + read * INPUT_READ_S_PER_IMAGE / max(1, probe.cpu_count / 2)
    scale = compile_scale(probe, case.model, resolved_scan(case, probe))
    build = (probe.init_s + probe.compile_s) * scale
    step = step_estimate(probe, case)
    if case.kind == "step":
        return probe.overhead_s + build + n_steps * step
    if case.kind == "pair":  # the model's default (A) and the flipped variant (B), in one process
        default = dataclasses.replace(case, scan="auto", vjp="auto")
        build_a = (probe.init_s + probe.compile_s) * compile_scale(probe, case.model, resolved_scan(default, probe))
        if step_key(case.model, case.dtype, case.batch_size) in cached:
            build_a *= CACHED_COMPILE_SHARE
        return probe.overhead_s + build_a + build + (settings.pair_steps + settings.warmup) * (
            step_estimate(probe, default) + step)
    if case.kind == "compile":
        return 2 * probe.overhead_s + (1 + CACHED_COMPILE_SHARE) * build
    if case.kind == "vmap":
        per_replica = CPU_VMAP_PER_REPLICA if probe.platform == "cpu" else 1.0
        return probe.overhead_s + 1.2 * build + n_steps * step * case.k * per_replica
    if case.kind == "concurrent":  # K processes share the host's cores while starting, and the device;
        # they compile what their single-run baseline (run before) put into the shared cache
        contention = max(1.0, case.k / max(1, probe.cpu_count // 2))
        return contention * (probe.overhead_s + CACHED_COMPILE_SHARE * build) + (n_steps + 1) * step * case.k
    raise ValueError(f"unknown case kind {case.kind!r}")


def unsupported_reason(case: Case, probe: Probe) -> str | None:
    """Why a case cannot run here at all, whatever the budget (None: it can)."""
    if case.backends and probe.platform not in case.backends:
        return f"{'/'.join(b.upper() for b in case.backends)} only: {case.why} (this backend: {probe.platform})"
    if case.model and case.model not in probe.nets:
        return f"{case.model} is not among the probed nets"
    if case.kind == "concurrent" and probe.platform == "tpu":
        return "a TPU is opened by one process at a time: pack runs there as vmapped replicas"
    if case.kind == "concurrent" and probe.platform == "cpu" and case.k > probe.cpu_count:
        return (f"{case.k} processes on a {probe.cpu_count}-core CPU: each would get less than a core, "
                "so packing cannot gain")
    return None


# ----------------------------------------------------------------------------- planner


class Corrections:
    """Measured/estimated wall-time ratios of finished cases, per kind and dtype, to re-scale the
    estimates of the cases still to come (a machine slower than the probe said shows up early)."""

    def __init__(self):
        self.ratios: dict[str, list[float]] = {}

    @staticmethod
    def group(case: Case) -> str:
        return f"{case.kind}/{case.dtype}"

    def add(self, case: Case, wall_s: float, estimate: float) -> None:
        if estimate > 0:
            self.ratios.setdefault(self.group(case), []).append(wall_s / estimate)

    def factor(self, case: Case) -> float:
        mine = self.ratios.get(self.group(case))
        every = [r for rs in self.ratios.values() for r in rs]
        ratios = mine or every
        return min(max(statistics.median(ratios), 0.5), 4.0) if ratios else 1.0


@dataclasses.dataclass(frozen=True)
class Plan:
    picked: tuple[tuple[Case, float], ...]  # (case, estimated seconds), in run order
    skipped: tuple[tuple[Case, str], ...]  # (case, reason)

    @property
    def estimated_s(self) -> float:
        return sum(e for _, e in self.picked)


def plan(cases: list[Case], probe: Probe, settings: Settings, time_left_s: float, done: frozenset = frozenset(),
         failed: dict | None = None, corrections: Corrections | None = None) -> Plan:
    """Which of `cases` fit into `time_left_s`, greedily in their order of value. Pure: runs nothing.

    A case is skipped when this backend cannot run it, when a case it is compared with neither ran
    (`done`) nor is planned, or when its estimate does not fit into what is left. The estimates of
    the picked cases never add up to more than `time_left_s`."""
    failed = failed or {}
    available, reasons = set(done), {}
    picked, skipped, left = [], [], time_left_s
    for case in cases:
        reason = unsupported_reason(case, probe)
        missing = [k for k in case.requires if k not in available]
        if reason is None and missing:
            why = failed.get(missing[0]) or reasons.get(missing[0]) or "not planned"
            reason = f"needs {missing[0]} ({why})"
        if reason is None:
            estimate = estimate_s(case, probe, settings, frozenset(available))
            estimate *= corrections.factor(case) if corrections else 1.0
            if estimate > left:
                reason = f"estimated {estimate:.0f} s, {max(left, 0):.0f} s of the budget left"
        if reason:
            skipped.append((case, reason))
            reasons[case.key] = "skipped: " + reason
            continue
        picked.append((case, estimate))
        available.add(case.key)
        left -= estimate
    return Plan(tuple(picked), tuple(skipped))


# ----------------------------------------------------------------------------- execution

TIMEOUT_FACTOR = 2.5  # a case may take this many times its estimate ...
TIMEOUT_SLACK_S = 30.0  # ... or its estimate plus this, whichever is more, but never past the deadline


@dataclasses.dataclass
class Outcome:
    status: str  # ok | failed | timeout
    data: object = None
    reason: str = ""


@dataclasses.dataclass
class Execution:
    records: list[dict]  # one per case that ran: key, kind, status, estimate_s, timeout_s, wall_s, reason, data
    skipped: list[dict]  # key, section, reason
    initial_plan: list[dict]  # key, estimate_s of the plan made right after the probe


def case_timeout(estimate: float, time_left_s: float) -> float:
    return max(0.0, min(max(TIMEOUT_FACTOR * estimate, estimate + TIMEOUT_SLACK_S), time_left_s))


def execute(cases: list[Case], probe: Probe, settings: Settings, deadline: float, run_case, done: frozenset,
            now=time.monotonic, log=lambda text: None) -> Execution:
    """Runs the planned cases one by one, re-planning before each with the time really left and the
    estimates corrected by what the finished cases took; every case's timeout ends by the deadline."""
    remaining, records, failed = [c for c in cases if c.key not in done], [], {}
    done, corrections, initial = set(done), Corrections(), None
    while True:
        current = plan(remaining, probe, settings, deadline - now(), frozenset(done), failed, corrections)
        if initial is None:
            initial = [{"key": c.key, "estimate_s": round(e, 1)} for c, e in current.picked]
        if not current.picked:
            break
        case, estimate = current.picked[0]
        timeout = case_timeout(estimate, deadline - now())
        log(f"# {case.key}: estimated {estimate:.0f} s (timeout {timeout:.0f} s); "
            f"{deadline - now():.0f} s left, {len(current.picked)} cases planned")
        start = now()
        try:
            outcome = run_case(case, timeout)
        except Exception as e:  # noqa: BLE001 (whatever breaks in one case must not end the report)
            outcome = Outcome("failed", reason=f"{type(e).__name__}: {e}"[-600:])
        wall = now() - start
        corrections.add(case, wall, estimate)
        records.append({"key": case.key, "kind": case.kind, "section": case.section, "status": outcome.status,
                        "estimate_s": round(estimate, 1), "timeout_s": round(timeout, 1), "wall_s": round(wall, 1),
                        "reason": outcome.reason, "data": outcome.data})
        remaining.remove(case)
        if outcome.status == "ok":
            done.add(case.key)
        else:
            failed[case.key] = f"{outcome.status}: {outcome.reason}"[:200]
        log(f"#   {outcome.status} in {wall:.0f} s" + (f": {outcome.reason[:300]}" if outcome.reason else ""))
    skipped = [{"key": c.key, "section": c.section, "reason": r} for c, r in current.skipped]
    return Execution(records, skipped, initial)


# ----------------------------------------------------------------------------- running cases in subprocesses


@dataclasses.dataclass
class Completed:
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool


def run_commands(commands: list[list[str]], timeout_s: float, logdir: str, env: dict | None = None) -> list[Completed]:
    """Runs the commands at once (each in its own process group, output to files, so full pipes
    cannot block them) and kills every one still running when `timeout_s` is up."""
    start = time.monotonic()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="run_", dir=logdir))
    procs, killed = [], set()
    with contextlib.ExitStack() as files:
        for i, command in enumerate(commands):
            out = files.enter_context(open(folder / f"{i}.out", "w"))
            err = files.enter_context(open(folder / f"{i}.err", "w"))
            procs.append(subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, env=env, start_new_session=True))
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, start + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other in procs:
                    if other.poll() is None:
                        os.killpg(other.pid, signal.SIGKILL)
                        killed.add(other.pid)
                proc.wait()
    wall = time.monotonic() - start
    return [Completed(proc.returncode, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text(), wall,
                      proc.pid in killed) for i, proc in enumerate(procs)]


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def outcome_of(done: list[Completed]) -> Outcome:
    """ok with the parsed JSON line of each process, or why not."""
    if any(c.timed_out for c in done):
        return Outcome("timeout", reason=f"killed after {max(c.wall_s for c in done):.0f} s")
    bad = [c for c in done if c.returncode != 0]
    if bad:
        return Outcome("failed", reason=f"exit {bad[0].returncode}: {bad[0].stderr.strip()[-800:]}")
    try:
        rows = [last_json(c.stdout) for c in done]
    except ValueError as e:
        return Outcome("failed", reason=f"{e}: {done[0].stderr.strip()[-400:]}")
    return Outcome("ok", rows if len(rows) > 1 else rows[0])


class MpsDaemon:
    """A private CUDA MPS control daemon (own pipe/log folders, so nobody else's is touched), started
    for the concurrent-process cases on an NVIDIA GPU when `nvidia-cuda-mps-control` exists."""

    def __init__(self, mode: str, platform_name: str, folder: str):
        self.env: dict = {}
        self.used = False
        self.binary = shutil.which("nvidia-cuda-mps-control")
        if mode == "off":
            self.note = "off (--mps=off)"
        elif platform_name != "gpu":
            self.note = f"not applicable on {platform_name}"
        elif not self.binary:
            self.note = "nvidia-cuda-mps-control not found: K processes time-slice the GPU"
        else:
            self.note = "not started yet"
        self.folder = folder

    def start(self) -> dict:
        """The environment variables that make a process a client of the daemon ({} without MPS)."""
        if self.used or not self.binary or self.note.startswith(("off", "not applicable")):
            return self.env
        env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(self.folder, "mps_pipe"),
               "CUDA_MPS_LOG_DIRECTORY": os.path.join(self.folder, "mps_log")}
        for path in env.values():
            os.makedirs(path, exist_ok=True)
        proc = subprocess.run([self.binary, "-d"], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=30, check=False)
        if proc.returncode == 0:
            self.env, self.used, self.note = env, True, "used: a private MPS daemon for the K > 1 processes"
        else:
            self.note = f"failed to start ({proc.returncode}: {proc.stderr.strip()[-200:]}): time-slicing"
        return self.env

    def stop(self) -> None:
        if self.used:
            subprocess.run([self.binary], input="quit\n", env={**os.environ, **self.env}, capture_output=True,
                           text=True, timeout=30, check=False)

    def describe(self) -> dict:
        return {"available": bool(self.binary), "used": self.used, "note": self.note}


class Runner:
    """Runs one case in subprocess(es) of the other benchmarks; called by `execute`."""

    def __init__(self, settings: Settings, probe: Probe, cpu_peaks: dict, folder: str):
        self.settings, self.probe, self.cpu_peaks, self.folder = settings, probe, cpu_peaks, folder
        self.cache = os.path.join(folder, "shared_xla_cache")  # shared by the non-compile cases: repeats are cheap
        self.mps = MpsDaemon(settings.mps, probe.platform, folder)

    def __call__(self, case: Case, timeout_s: float) -> Outcome:
        return getattr(self, f"run_{case.kind}")(case, timeout_s)

    def throughput_command(self, case: Case, *extra: str) -> list[str]:
        s = self.settings
        cmd = [sys.executable, "-m", "benchmarks.throughput", f"--model={case.model}", f"--batch_size={case.batch_size}",
               f"--dtype={case.dtype}", f"--scan={case.scan}", f"--canonical_conv_grad={case.vjp}",
               f"--steps={s.steps}", f"--warmup={s.warmup}", f"--num_examples={s.num_examples}",
               f"--compilation_cache={self.cache}", "--json", *extra]
        if s.devices:
            cmd.append(f"--devices={s.devices}")
        peak = s.peak_tflops or self.cpu_peaks.get(case.dtype)
        if peak:  # on CPU: the probe's measured matmul peak, so no case re-measures it
            cmd.append(f"--peak_tflops={peak}")
        return cmd

    def run_step(self, case: Case, timeout_s: float) -> Outcome:
        return outcome_of(run_commands([self.throughput_command(case)], timeout_s, self.folder))

    def run_pair(self, case: Case, timeout_s: float) -> Outcome:
        """The model's default and the flipped variant in one process, steps interleaved (pair_worker)."""
        s = self.settings
        cmd = [sys.executable, "-m", "benchmarks.hardware_report", "--worker=pair", f"--model={case.model}",
               f"--batch_size={case.batch_size}", f"--dtype={case.dtype}", f"--scan={case.scan}",
               f"--canonical_conv_grad={case.vjp}", f"--steps={s.pair_steps}", f"--warmup={s.warmup}",
               f"--num_examples={s.num_examples}", f"--devices={s.devices}", f"--compilation_cache={self.cache}"]
        peak = s.peak_tflops or self.cpu_peaks.get(case.dtype)
        cmd += [f"--peak_tflops={peak}"] if peak else []
        return outcome_of(run_commands([cmd], timeout_s, self.folder))

    def run_vmap(self, case: Case, timeout_s: float) -> Outcome:
        return outcome_of(run_commands([self.throughput_command(case, f"--replicas={case.k}", "--pack=vmap")],
                                       timeout_s, self.folder))

    def run_concurrent(self, case: Case, timeout_s: float) -> Outcome:
        """K processes of the net at once, as `launch.sh --runs-per-gpu K` starts them, timed while all run."""
        sync = tempfile.mkdtemp(prefix="sync_", dir=self.folder)
        env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": sweep.memory_fraction(case.k),
               "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **self.mps.start()}
        if self.probe.platform == "gpu":  # all K on one GPU, as launch.sh gives each slot its GPU(s)
            env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        command = self.throughput_command(case, f"--sync={sync}:{case.k}")
        outcome = outcome_of(run_commands([command] * case.k, timeout_s, self.folder, env))
        if outcome.status == "ok":
            outcome.data = {"runs": outcome.data, "mem_fraction": env["XLA_PYTHON_CLIENT_MEM_FRACTION"],
                            "mps": self.mps.used}
        return outcome

    def run_compile(self, case: Case, timeout_s: float) -> Outcome:
        """benchmarks.compile_time's two processes on one fresh cache: cold, then cached."""
        deadline = time.monotonic() + timeout_s
        cache = tempfile.mkdtemp(prefix="compile_cache_", dir=self.folder)
        rows = []
        try:
            for _ in range(2):
                rows.append(compile_time.measure(case.model, case.batch_size, "auto", cache,
                                                 max(1.0, deadline - time.monotonic()), self.settings.devices))
        except subprocess.TimeoutExpired:
            return Outcome("timeout", reason=f"{'cold' if not rows else 'cached'} compile killed at the case's timeout")
        except RuntimeError as e:
            return Outcome("failed", reason=str(e)[-800:])
        cold, cached = rows
        return Outcome("ok", {"model": case.model, "batch_size": case.batch_size, "dtype": cold["dtype"],
                              "scan": cold["scan"], "lower_s": cold["lower_s"], "compile_s": cold["compile_s"],
                              "compile_s_cached": cached["compile_s"], "init_s": cold["init_s"],
                              "init_s_cached": cached["init_s"], "load_avg": cached["load_avg"]})

    def run_input(self, case: Case, timeout_s: float) -> Outcome:
        s = self.settings
        command = [sys.executable, "-m", "benchmarks.input_pipeline", f"--data_dir={os.path.join(self.folder, 'tfds')}",
                   f"--num_images={s.input_images}", f"--batch_size={s.input_batch_size}",
                   f"--batches={s.input_batches}", "--warmup=2", f"--image_size={s.input_image_size}",
                   f"--shuffle_buffer={min(10_000, s.input_images)}", "--json"]
        return outcome_of(run_commands([command], timeout_s, self.folder))


def run_probe(args: argparse.Namespace, folder: str, timeout_s: float) -> tuple[dict | None, str]:
    """The probe worker in a subprocess: (its JSON, '') or (None, why it failed)."""
    cmd = [sys.executable, "-m", "benchmarks.hardware_report", "--worker=probe", f"--batch_size={args.batch_size}",
           f"--num_examples={args.num_examples}", f"--devices={args.devices}",
           f"--compilation_cache={os.path.join(folder, 'shared_xla_cache')}"]
    cmd += [f"--steps={args.steps}"] if args.steps is not None else []
    cmd += [f"--warmup={args.warmup}"] if args.warmup is not None else []
    cmd += [f"--peak_tflops={args.peak_tflops}"] if args.peak_tflops else []
    spawned = time.time()
    (done,) = run_commands([cmd], timeout_s, folder)
    outcome = outcome_of([done])
    if outcome.status != "ok":
        return None, f"probe {outcome.status}: {outcome.reason}"
    worker = outcome.data
    worker["startup_s"] = max(0.0, worker["imported_at"] - spawned)
    worker["wall_s"] = done.wall_s
    return worker, ""


# ----------------------------------------------------------------------------- assembling the results


def step_row(result: dict, cpu_peaks: dict, given_peak: float | None, case_key: str) -> dict:
    """One step measurement with its % of peak (per device x devices) and memory."""
    dtype, devices = result["dtype"], result["devices"]
    peak, source = device_peak(result["platform"], result["device_kind"], dtype, cpu_peaks, given_peak)
    row = {k: result.get(k) for k in ("model", "batch_size", "dtype", "replicas", "scan", "canonical_conv_grad",
                                      "step_s", "step_s_min", "step_s_max", "img_per_s", "tflops", "compile_s",
                                      "peak_bytes", "temp_bytes", "macs_per_image", "load_avg")}
    row["case"] = case_key
    row["peak_tflops"] = peak * devices if peak else None
    row["peak_source"] = source
    row["pct_of_peak"] = 100 * result["tflops"] / (peak * devices) if peak and result.get("tflops") else None
    f32_peak = f32_default_peak(result["platform"], result["device_kind"]) if dtype == "float32" else None
    row["pct_of_f32_default_peak"] = (100 * result["tflops"] / (f32_peak * devices)
                                      if f32_peak and result.get("tflops") else None)
    return row


def packing_rows(records: list[dict], singles: dict) -> tuple[list[dict], list[dict]]:
    """Aggregate img/s and the gain over one run, for K concurrent processes and K vmapped replicas."""
    concurrent, vmapped = [], []
    for rec in records:
        if rec["status"] != "ok" or rec["kind"] not in ("concurrent", "vmap"):
            continue
        _, model, k = rec["key"].split("/")
        k = int(k[1:])
        if rec["kind"] == "concurrent":
            runs = rec["data"]["runs"]
            total = sum(r["batch_size"] / r["step_s"] for r in runs)
            dtype = runs[0]["dtype"]
            extra = {"mem_fraction": rec["data"]["mem_fraction"], "mps": rec["data"]["mps"],
                     "step_s_per_run": max(r["step_s"] for r in runs),
                     "peak_bytes": max((r["peak_bytes"] or 0) for r in runs) or None,
                     "temp_bytes": runs[0]["temp_bytes"]}
        else:
            total, dtype = rec["data"]["img_per_s"], rec["data"]["dtype"]
            extra = {"step_s": rec["data"]["step_s"], "peak_bytes": rec["data"]["peak_bytes"],
                     "temp_bytes": rec["data"]["temp_bytes"]}
        single = singles.get((model, dtype))
        row = {"model": model, "k": k, "dtype": dtype, "img_per_s_total": total,
               "img_per_s_single": single, "gain": total / single if single else None, **extra}
        (concurrent if rec["kind"] == "concurrent" else vmapped).append(row)
    return (sorted(concurrent, key=lambda r: (r["model"], r["k"])),
            sorted(vmapped, key=lambda r: (r["model"], r["k"])))


def verdict(a_s: float, b_s: float, a: str, b: str, tolerance: float = 0.05) -> str:
    """Which of two step times (or 1 and a paired ratio b/a) wins, or 'tie' within `tolerance`."""
    if a_s < b_s * (1 - tolerance):
        return a
    if b_s < a_s * (1 - tolerance):
        return b
    return "tie"


def paired_verdict(a_s: float, b_s: float, ratio_b_over_a: float, a: str, b: str) -> str:
    """A winner only when the two medians and the median of the interleaved ratios agree (beyond
    noise): with a few steps on a shared machine either alone can mislead."""
    by_medians, by_pairs = verdict(a_s, b_s, a, b), verdict(1.0, ratio_b_over_a, a, b)
    return by_medians if by_medians == by_pairs else "tie"


def scan_recommendation(pairs: list[dict], current: int) -> dict:
    """SCAN_AUTO_MAX_UNROLLED_BLOCKS from scan-vs-unrolled pairs (each: blocks, verdict).

    Unrolled nets up to the deepest one where unrolled wins, scanned from the shallowest where scan
    wins; ties (within noise) keep the current value when it is consistent with the wins."""
    if not pairs:
        return {"value": None, "text": "not measured (the scan/unrolled cases did not run)"}
    unrolled = sorted(p["blocks"] for p in pairs if p["verdict"] == "unrolled")
    scanned = sorted(p["blocks"] for p in pairs if p["verdict"] == "scan")

    def consistent(v: int) -> bool:
        return all(b <= v for b in unrolled) and all(b > v for b in scanned)

    if unrolled and scanned and unrolled[-1] >= scanned[0]:
        return {"value": current, "text": f"inconsistent (unrolled wins at {unrolled}, scan at {scanned} blocks): "
                                           f"noise; keep {current} and re-measure"}
    if consistent(current):
        value = current
    elif scanned:
        value = (unrolled[-1] if unrolled else scanned[0] - 1)
    else:
        value = unrolled[-1]
    measured = ", ".join(f"{p['model']} ({p['blocks']} blocks): {p['verdict']}" for p in pairs)
    change = "keep" if value == current else "set"
    note = "; deeper nets not measured (resnet1202 stays scanned: unrolled, it does not compile in minutes)" \
        if not scanned else ""
    return {"value": value, "agrees_with_current": consistent(current),
            "text": f"{change} SCAN_AUTO_MAX_UNROLLED_BLOCKS = {value} ({measured}){note}"}


def vjp_recommendation(pairs: list[dict], platform_name: str) -> dict:
    """The canonical conv VJP on or off on this backend, from on-vs-off pairs (each: verdict on/off/tie)."""
    default = platform_name == "cpu"
    if not pairs:
        return {"value": None, "text": "not measured (the VJP cases did not run)"}
    wins = {v: [p for p in pairs if p["verdict"] == v] for v in ("on", "off", "tie")}
    measured = ", ".join(f"{p['model']} ({'scanned' if p['scan'] else 'unrolled'}): {p['ratio_off_over_on']:.2f}x "
                         f"off/on -> {p['verdict']}" for p in pairs)
    if wins["on"] and not wins["off"]:
        value = True
    elif wins["off"] and not wins["on"]:
        value = False
    elif not wins["on"] and not wins["off"]:
        value = default
    else:
        scanned_on = all(p["verdict"] != "off" for p in pairs if p["scan"])
        unrolled_off = all(p["verdict"] != "on" for p in pairs if not p["scan"])
        if scanned_on and unrolled_off:
            return {"value": "scanned only", "agrees_with_current": False,
                    "text": f"on for scanned nets, off for unrolled ones ({measured})"}
        return {"value": default, "agrees_with_current": True, "text": f"mixed, keep the default ({measured})"}
    word = "on" if value else "off"
    return {"value": value, "agrees_with_current": value == default,
            "text": f"{'keep' if value == default else 'turn'} it {word} on {platform_name} ({measured})"}


def ablation(records: list[dict], steps: list[dict], nets: dict, platform_name: str, dtype: str) -> dict:
    """Scan vs unrolled and VJP on vs off, from the interleaved pairs, with the two recommendations."""
    scan_pairs, vjp_pairs = [], []
    for rec in records:
        if rec["kind"] != "pair" or rec["status"] != "ok":
            continue
        a, b, ratio = dict(rec["data"]["a"]), rec["data"]["b"], rec["data"]["ratio_b_over_a"]
        model, what = rec["key"].split("/")[1:]
        own = next((r for r in steps if r["case"] == step_key(model, a["dtype"], a["batch_size"])), None)
        if own:  # the default's cold compile: in the pair it was read from the shared cache
            a["compile_s"] = own["compile_s"]
        if what == "scan":
            scanned, unrolled = (a, b) if a["scan"] else (b, a)
            paired = ratio if a["scan"] else 1 / ratio  # unrolled / scanned, the median of interleaved steps
            scan_pairs.append({"model": model, "blocks": nets[model]["blocks"], "step_s_scan": scanned["step_s"],
                               "step_s_unrolled": unrolled["step_s"], "compile_s_scan": scanned["compile_s"],
                               "compile_s_unrolled": unrolled["compile_s"], "ratio_unrolled_over_scan": paired,
                               "verdict": paired_verdict(scanned["step_s"], unrolled["step_s"], paired, "scan",
                                                         "unrolled")})
        else:
            on, off = (a, b) if a["canonical_conv_grad"] else (b, a)
            paired = ratio if a["canonical_conv_grad"] else 1 / ratio  # off / on
            vjp_pairs.append({"model": model, "scan": a["scan"], "step_s_on": on["step_s"], "step_s_off": off["step_s"],
                              "ratio_off_over_on": paired,
                              "verdict": paired_verdict(on["step_s"], off["step_s"], paired, "on", "off")})
    return {"dtype": dtype, "scan_pairs": scan_pairs, "vjp_pairs": vjp_pairs,
            "recommendation": {"backend": platform_name,
                               "scan_auto_max_unrolled_blocks": scan_recommendation(
                                   scan_pairs, models.SCAN_AUTO_MAX_UNROLLED_BLOCKS),
                               "canonical_conv_grad": vjp_recommendation(vjp_pairs, platform_name)}}


def curve(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through (macs, step_s) points; proportional to macs beyond the ends."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1] * x / pts[0][0]
    if x >= pts[-1][0]:
        return pts[-1][1] * x / pts[-1][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError("unreachable")


def project_step_times(measured: dict, macs: dict, targets) -> dict:
    """Step time per net: measured, or interpolated in multiply-adds between measured nets of its
    family (plain/residual); a family with one measured net follows the other family's curve,
    scaled through that net. {net: (step_s or None, how)}."""
    fams = {f: [(macs[m], s) for m, s in measured.items() if m.startswith(f)] for f in ("plain", "resnet")}
    out = {}
    for net in targets:
        if net in measured:
            out[net] = (measured[net], "measured")
            continue
        own = fams["plain" if net.startswith("plain") else "resnet"]
        other = fams["resnet" if net.startswith("plain") else "plain"]
        if len(own) >= 2:
            out[net] = (curve(own, macs[net]), "interpolated in MACs between measured nets of its family")
        elif len(own) == 1 and len(other) >= 2:
            ratio = own[0][1] / curve(other, own[0][0])
            out[net] = (ratio * curve(other, macs[net]), "the other family's MAC curve, scaled through its measured net")
        elif own:
            out[net] = (curve(own, macs[net]), "proportional to MACs from its family's one measured net")
        elif other:
            out[net] = (curve(other, macs[net]), "the other family's MAC curve (same MACs, no net of its own measured)")
        else:
            out[net] = (None, "no net measured")
    return out


def fig6_runs() -> list[tuple[str, str, object]]:
    """(run name, benchmark net, resolved config) of each run of the Fig. 6 sweep."""
    runs, _ = sweep.list_runs(str(FIG6_SWEEP))
    out = []
    for run in runs:
        config = sweep.resolve_config(run.config)
        out.append((run.name, sweep_time.model_name(config), config))
    return out


def fig6_projection(steps: list[dict], nets: dict, concurrent: list[dict], measured_batch: int) -> dict:
    """The Fig. 6 sweep's wall time, extrapolated from the measured steps: one run at a time, and K at
    once per device with each measured K's gain (nearest packed net in MACs) applied per run."""
    runs = fig6_runs()
    dtype = str(runs[0][2].model.dtype)
    batch = int(runs[0][2].batch_size)
    measured = {r["model"]: r["step_s"] * batch / measured_batch for r in steps
                if r["dtype"] == dtype and r["replicas"] == 1 and r["step_s"] and r["case"] == step_key(
                    r["model"], dtype, measured_batch)}
    macs = {n: v["macs"] for n, v in nets.items()}
    per_net = project_step_times(measured, macs, [net for _, net, _ in runs])
    if any(s is None for s, _ in per_net.values()):
        return {"dtype": dtype, "runs": [], "text": "not projected: no CIFAR net was measured in " + dtype}
    gains = {(r["model"], r["k"]): r["gain"] for r in concurrent if r["gain"] and r["dtype"] == dtype}
    ks = sorted({k for _, k in gains})
    rows, totals = [], {}
    for k in [1] + ks:
        costs = []
        for name, net, config in runs:
            step, how = per_net[net]
            if k > 1:
                packed = [m for m, kk in gains if kk == k]
                nearest = min(packed, key=lambda m: abs(macs[m] - macs[net]))
                step = step * k / gains[nearest, k]
            cost = sweep_time.run_cost(config, step, 0.0)
            costs.append(cost)
            if k == 1:
                rows.append({"run": name, "model": net, "step_s": step, "how": how, "run_s": cost,
                             "num_train_steps": int(config.num_train_steps)})
        totals[k] = sweep_time.makespan(costs, k)
    best = min(totals, key=totals.get)
    return {"dtype": dtype, "batch_size": batch, "runs": rows, "wall_s": {str(k): v for k, v in totals.items()},
            "best_k": best, "best_wall_s": totals[best], "sequential_wall_s": totals[1],
            "note": ("extrapolated from measured steps (not run end to end); evaluations costed as in "
                     "benchmarks/sweep_time.py; compile time left out (seconds against hours); K > 1 applies "
                     "the measured gain of the nearest packed net in MACs to every run, round robin over K slots"
                     + (f"; steps measured at batch {measured_batch}, scaled linearly to {batch}"
                        if measured_batch != batch else ""))}


def input_section(records: list[dict], steps: list[dict]) -> dict:
    """The input pipeline's images/s next to what the ImageNet steps consume."""
    rec = next((r for r in records if r["kind"] == "input" and r["status"] == "ok"), None)
    if rec is None:
        return {}
    pipe = rec["data"]
    consumers = [{"model": r["model"], "dtype": r["dtype"], "batch_size": r["batch_size"], "img_per_s": r["img_per_s"],
                  "pipeline_over_step": pipe["images_per_s"] / r["img_per_s"]}
                 for r in steps if r["model"] in IMAGENET_STEP_NETS + (CPU_IMAGENET_NET,) and r["img_per_s"]]
    return {"images_per_s": pipe["images_per_s"], "batch_size": pipe["batch_size"], "image_size": pipe["image_size"],
            "mean_jpeg_kb": pipe["mean_jpeg_kb"], "cpus": pipe["cpus"], "load_avg": pipe["load_avg"],
            "consumers": consumers}


def assemble(meta: dict, worker: dict, probe: Probe, settings: Settings, execution: Execution) -> dict:
    """The report as one JSON-able dict, from the probe and every case's record."""
    machine, cpu_peaks = worker["machine"], worker["cpu_peaks"]
    probe_key = step_key(PROBE_MODEL, "float32", settings.batch_size)
    steps = [step_row(worker["result"], cpu_peaks, settings.peak_tflops, probe_key)]
    steps += [step_row(r["data"], cpu_peaks, settings.peak_tflops, r["key"]) for r in execution.records
              if r["kind"] == "step" and r["status"] == "ok"]
    singles = {(r["model"], r["dtype"]): r["img_per_s"] for r in steps
               if r["case"] == step_key(r["model"], r["dtype"], settings.batch_size)}
    concurrent, vmapped = packing_rows(execution.records, singles)
    compiles = [r["data"] for r in execution.records if r["kind"] == "compile" and r["status"] == "ok"]
    failed = [{"key": r["key"], "status": r["status"], "reason": r["reason"]} for r in execution.records
              if r["status"] != "ok"]
    peaks = {}
    for dt in DTYPES:
        tflops, source = device_peak(probe.platform, probe.device_kind, dt, cpu_peaks, settings.peak_tflops)
        peaks[dt] = {"tflops": tflops, "source": source}
    meta = dict(meta)
    mps = meta.pop("mps")
    return {
        **meta,
        "machine": machine,
        "peaks": peaks,
        "settings": dataclasses.asdict(settings),
        "probe": {**dataclasses.asdict(probe), "wall_s": round(worker["wall_s"], 1)},
        "steps": steps,
        "compile": compiles,
        "packing": {"mps": mps, "concurrent": concurrent, "vmap": vmapped},
        "ablation": ablation(execution.records, steps, probe.nets, probe.platform, settings.ablation_dtype),
        "fig6": fig6_projection(steps, probe.nets, concurrent, settings.batch_size),
        "input_pipeline": input_section(execution.records, steps),
        "initial_plan": execution.initial_plan,
        "cases": execution.records,  # with each case's raw result ("data"), so nothing is lost
        "skipped": execution.skipped,
        "failed": failed,
    }


# ----------------------------------------------------------------------------- Markdown


def _f(value, spec: str = ".3f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def hms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = round(seconds)
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d ({seconds / 3600:.0f} h)"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def memory_cell(row: dict) -> str:
    if row.get("peak_bytes"):
        return f"{row['peak_bytes'] / 2**30:.2f} GiB peak"
    return f"{row['temp_bytes'] / 2**20:.0f} MiB XLA temp" if row.get("temp_bytes") else "–"


def render_header(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    lines = [f"# Hardware report: {m['device_count']}x {m['device_kind']} ({m['platform']})", "",
             f"`{' '.join(report['command'])}`, {report['started']} to {report['finished']}.", ""]
    facts = [("device", (f"{m['device_count']}x {m['device_kind']} ({m['platform']}); memory_stats: "
                         f"{'yes' if m['memory_stats'] else 'no'}")),
             ("driver / platform", f"{report.get('driver') or '–'} / {m.get('platform_version') or '–'}"),
             ("jax / jaxlib / python", f"{m['jax']} / {m['jaxlib']} / {m['python']}"),
             ("host CPU", m["host_cpu"]),
             ("load average (1, 5, 15 min)", f"before {report['load_avg_before']}, after {report['load_avg_after']}"),
             ("budget", (f"{report['elapsed_s']:.0f} s used of {report['budget_s']:.0f} s "
                         f"({100 * report['elapsed_s'] / report['budget_s']:.0f}%)")),
             ("steps per measurement", (f"{s['warmup']} warm-up + {s['steps']} timed (median; scan/VJP pairs: "
                                        f"{s.get('pair_steps', s['steps'])} each), "
                                        f"{s['num_examples']:,} images on the device"))]
    for dt, p in report["peaks"].items():
        facts.append((f"peak {dt}", f"{_f(p['tflops'], '.3f')} TFLOP/s per device ({p['source']})"))
    lines += md_table(["", ""], [[a, b] for a, b in facts])
    if report.get("note"):
        lines += ["", report["note"]]
    return lines


def render_steps(report: dict) -> list[str]:
    rows = []
    for r in report["steps"]:
        spread = f"{_f(r['step_s'])} ({_f(r['step_s_min'])}–{_f(r['step_s_max'])})"
        pct = _f(r["pct_of_peak"], ".1f") + ("" if r["pct_of_f32_default_peak"] is None
                                              else f" ({_f(r['pct_of_f32_default_peak'], '.1f')} of TF32)")
        rows.append([r["model"], str(r["batch_size"]), r["dtype"], "yes" if r["scan"] else "no",
                     "on" if r["canonical_conv_grad"] else "off", spread, _f(r["img_per_s"], ".1f"),
                     _f(r["tflops"], ".3f"), pct, memory_cell(r)])
    head = ["net", "batch", "dtype", "scan", "conv VJP", "step s (min–max)", "img/s", "TFLOP/s", "% of peak", "memory"]
    return ["## Training step", ""] + md_table(head, rows) + [
        "", "TFLOP/s = 6 x forward multiply-adds x images / step time (benchmarks/throughput.py)."]


def render_compile(report: dict) -> list[str]:
    if not report["compile"]:
        return []
    rows = [[r["model"], "yes" if r["scan"] else "no", _f(r["lower_s"], ".2f"), _f(r["compile_s"], ".2f"),
             _f(r["compile_s_cached"], ".2f"), f"{_f(r['init_s'], '.2f')} / {_f(r['init_s_cached'], '.2f')}"]
            for r in report["compile"]]
    return [f"## Compile time of the training step (batch {report['settings']['batch_size']})", ""] + md_table(
        ["net", "scan", "lower s", "compile s, cold", "compile s, cached", "init_state s, cold / cached"], rows) + [
        "", "Cold: a fresh persistent compilation cache; cached: a second process reading it (benchmarks/compile_time.py)."]


def render_packing(report: dict) -> list[str]:
    p = report["packing"]
    lines = ["## Several runs on one device", "", f"CUDA MPS: {p['mps']['note']}.", ""]
    rows = [[r["model"], str(r["k"]), r["dtype"], _f(r["img_per_s_single"], ".1f"), _f(r["img_per_s_total"], ".1f"),
             _f(r["gain"], ".2f") + "x", r["mem_fraction"], memory_cell(r)] for r in p["concurrent"]]
    if rows:
        lines += [("K concurrent processes (`launch.sh --runs-per-gpu K`: XLA_PYTHON_CLIENT_MEM_FRACTION as below, "
                   "XLA_PYTHON_CLIENT_PREALLOCATE=false), timed while all K run:"), ""]
        lines += md_table(["net", "K", "dtype", "1 run img/s", "K runs img/s, total", "gain", "mem fraction", "memory"],
                          rows) + [""]
    rows = [[r["model"], str(r["k"]), r["dtype"], _f(r["img_per_s_single"], ".1f"), _f(r["img_per_s_total"], ".1f"),
             _f(r["gain"], ".2f") + "x", memory_cell(r)] for r in p["vmap"]]
    if rows:
        lines += ["K vmapped replicas in one program (`throughput --replicas=K --pack=vmap`):", ""]
        lines += md_table(["net", "K", "dtype", "1 run img/s", "K replicas img/s, total", "gain", "memory"], rows)
    if not p["concurrent"] and not p["vmap"]:
        lines.append("No packing case ran (see Skipped).")
    if p["concurrent"] and loaded_cpu(report):
        lines += ["", (f"Caveat: the load average was above the {report['machine']['cpu_count']} cores, so other "
                       "jobs were running: K processes then also take a larger share of the cores from them than "
                       "one process does, and the gain above is partly that share, not packing.")]
    return lines


def loaded_cpu(report: dict) -> bool:
    """A CPU backend whose load average exceeded its cores: other jobs shared the machine."""
    m = report["machine"]
    return m["platform"] == "cpu" and max(report["load_avg_before"][0], report["load_avg_after"][0]) > m["cpu_count"]


def render_ablation(report: dict) -> list[str]:
    a = report["ablation"]
    lines = [f"## Scan vs unrolled, canonical conv VJP on vs off ({a['dtype']})", "",
             ("Each pair ran in one process: the model's default and the flipped variant, compiled side by side, "
              "their steps interleaved (A B, B A, ...), so a shared machine's changing load hits both alike."), ""]
    if a["scan_pairs"]:
        lines += md_table(["net", "blocks", "step s scanned", "step s unrolled", "unrolled / scanned (paired)",
                           "cold compile s scanned / unrolled", "faster"],
                          [[p["model"], str(p["blocks"]), _f(p["step_s_scan"]), _f(p["step_s_unrolled"]),
                            _f(p["ratio_unrolled_over_scan"], ".2f"),
                            f"{_f(p['compile_s_scan'], '.1f')} / {_f(p['compile_s_unrolled'], '.1f')}", p["verdict"]]
                           for p in a["scan_pairs"]]) + [""]
    if a["vjp_pairs"]:
        lines += md_table(["net", "scan", "step s VJP on", "step s VJP off", "off / on (paired)", "faster"],
                          [[p["model"], "yes" if p["scan"] else "no", _f(p["step_s_on"]), _f(p["step_s_off"]),
                            _f(p["ratio_off_over_on"], ".2f"), p["verdict"]] for p in a["vjp_pairs"]]) + [""]
    rec = a["recommendation"]
    lines += [(f"**Recommendation for {rec['backend']}** (a winner needs both the medians and the paired ratio "
               "to differ by more than 5%; else a tie):"), "",
              f"- scan threshold: {rec['scan_auto_max_unrolled_blocks']['text']}",
              f"- canonical conv VJP: {rec['canonical_conv_grad']['text']}",
              "", ("`SCAN_AUTO_MAX_UNROLLED_BLOCKS` is deliberately the same on every backend (a net's parameter "
                   "layout and checkpoints do not depend on where it runs), so a backend that disagrees should "
                   "force `--config.model.scan` rather than change it for all.")]
    return lines


def render_fig6(report: dict) -> list[str]:
    f = report["fig6"]
    if not f.get("runs"):
        return ["## Fig. 6 sweep wall time", "", f.get("text", "not projected")]
    rows = [[r["run"], _f(r["step_s"], ".4f"), r["how"], hms(r["run_s"])] for r in f["runs"]]
    title = (f"## Fig. 6 sweep wall time (9 nets x {f['runs'][0]['num_train_steps']:,} iterations, batch "
             f"{f['batch_size']}, {f['dtype']})")
    lines = [title, ""] + md_table(["run", "s/step", "step time from", "run time"], rows)
    lines += ["", f"- one run at a time: **{hms(f['sequential_wall_s'])}**"]
    for k, wall in f["wall_s"].items():
        if k != "1":
            lines.append(f"- {k} runs at once per device: {hms(wall)} ({f['sequential_wall_s'] / wall:.2f}x)")
    if len(f["wall_s"]) > 1:
        lines.append(f"- best packing measured: K = {f['best_k']}, {hms(f['best_wall_s'])}"
                     + (" (but see the caveat on packing gains of a loaded CPU above)" if loaded_cpu(report) else ""))
    else:
        lines.append("- packing: no K > 1 measured in this dtype, so only the sequential time is projected")
    return lines + ["", f["note"] + "."]


def render_input(report: dict) -> list[str]:
    i = report["input_pipeline"]
    if not i:
        return []
    summary = (f"{i['images_per_s']:.0f} images/s (train pipeline, batch {i['batch_size']}, {i['image_size']}px, "
               f"synthetic ImageNet-size JPEGs of {i['mean_jpeg_kb']:.0f} KB, {i['cpus']} CPUs, "
               f"load {i['load_avg']:.1f}).")
    lines = ["## ImageNet input pipeline on this host", "", summary, ""]
    if i["consumers"]:
        lines += md_table(["step", "dtype", "batch", "step img/s", "pipeline / step"],
                          [[c["model"], c["dtype"], str(c["batch_size"]), _f(c["img_per_s"], ".1f"),
                            _f(c["pipeline_over_step"], ".2f") + "x"] for c in i["consumers"]])
        lines += ["", "Above 1x this host can feed that step (the ratio is how many such devices it could feed)."]
    return lines


def render_cases(report: dict) -> list[str]:
    lines = ["## Cases", ""]
    lines += md_table(["case", "status", "estimated s", "took s", "note"],
                      [[r["key"], r["status"], _f(r["estimate_s"], ".0f"), _f(r["wall_s"], ".0f"),
                        (r["reason"] or "")[:160].replace("|", "/").replace("\n", " ")] for r in report["cases"]])
    if report["skipped"]:
        lines += ["", "### Skipped", ""] + md_table(["case", "why"], [[s["key"], s["reason"]] for s in report["skipped"]])
    return lines


def render_markdown(report: dict) -> str:
    parts = [render_header(report), render_steps(report), render_compile(report), render_packing(report),
             render_ablation(report), render_fig6(report), render_input(report), render_cases(report)]
    return "\n".join(line for part in parts if part for line in part + [""])


# ----------------------------------------------------------------------------- main


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (in the parent: no CUDA context needed)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def write_report(report: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "hardware_report.json", out / "hardware_report.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere), so that the interpreter's start and
    the imports count against the budget too."""
    try:
        ticks = int(pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def report_machine(args: argparse.Namespace, argv: list[str]) -> int:
    """Probe, plan, run the cases, assemble and write the report; never past the budget (+ a margin)."""
    start, started = time.monotonic() - process_age_s(), now_iso()
    deadline_all = start + args.budget_s
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="hardware_report_") as folder:
        reserve = args.reserve_s if args.reserve_s is not None else max(5.0, 0.02 * args.budget_s)
        log(f"# probe: one resnet20 step on this backend (budget {args.budget_s:.0f} s)")
        worker, error = run_probe(args, folder, max(1.0, deadline_all - reserve - time.monotonic()))
        if worker is None:
            log(f"error: {error}")
            return 1
        probe = Probe.from_worker(worker)
        settings = resolve_settings(args, probe.platform)
        log(f"#   {probe.platform} ({probe.device_kind}): resnet20 {probe.step_s:.3f} s/step, compile "
            f"{probe.compile_s:.1f} s, init {probe.init_s:.1f} s, process overhead {probe.overhead_s:.1f} s")
        runner = Runner(settings, probe, worker["cpu_peaks"], folder)
        cases = build_cases(settings, probe)
        try:
            execution = execute(cases, probe, settings, deadline_all - settings.reserve_s, runner,
                                done=frozenset({step_key(PROBE_MODEL, "float32", settings.batch_size)}), log=log)
        finally:
            runner.mps.stop()
        meta = {"command": ["python", "-m", "benchmarks.hardware_report", *argv], "started": started,
                "budget_s": args.budget_s, "load_avg_before": load_before, "driver": nvidia_driver(),
                "mps": runner.mps.describe(), "note": args.note}
        meta.update(finished=now_iso(), elapsed_s=time.monotonic() - start,
                    load_avg_after=[round(x, 2) for x in os.getloadavg()])
        report = assemble(meta, worker, probe, settings, execution)
    out = pathlib.Path(args.out) if args.out else REPO / "benchmarks" / "results" / slug(probe.device_kind)
    report["elapsed_s"] = time.monotonic() - start
    json_path, md_path = write_report(report, out)
    log(f"# wrote {json_path} and {md_path} in {report['elapsed_s']:.0f} s of {args.budget_s:.0f} s; "
        f"{len(report['skipped'])} skipped, {len(report['failed'])} failed")
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = set(names) - set(SECTIONS)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown sections {sorted(bad)}; choose from {', '.join(SECTIONS)}")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.parser(__doc__, prog="python -m benchmarks.hardware_report")
    p.add_argument("--budget_s", type=float, default=480.0, help="wall-clock budget of the whole report (default 480)")
    p.add_argument("--out", default="", help="output folder (default benchmarks/results/<device kind>/)")
    p.add_argument("--batch_size", type=int, default=128, help="CIFAR nets' batch (default 128, the paper's)")
    p.add_argument("--imagenet_batch_size", type=int, default=256, help="ImageNet nets' batch on GPU/TPU")
    p.add_argument("--cpu_imagenet_batch_size", type=int, default=16, help="resnet18's batch on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 3 on CPU, 20 else)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per case (default: 1 on CPU, 5 else)")
    p.add_argument("--pair_steps", type=int, default=None,
                   help="timed steps of each variant of a scan/VJP pair (default: max(steps, 5))")
    p.add_argument("--num_examples", type=int, default=50_000, help="random CIFAR images held on the device")
    p.add_argument("--devices", type=int, default=1, help="use the first N devices (default 1: per-device "
                   "numbers; 0: all, data parallel)")
    p.add_argument("--concurrent", type=_ints, default=[1, 2, 4, 8], help="K concurrent processes per device")
    p.add_argument("--vmap", type=_ints, default=[1, 4, 8], help="K vmapped replicas in one program")
    p.add_argument("--pack_dtype", default="float32", choices=DTYPES, help="dtype of the packing cases")
    p.add_argument("--ablation_dtype", default="float32", choices=DTYPES, help="dtype of the scan/VJP cases")
    p.add_argument("--input_images", type=int, default=None, help="synthetic JPEGs built (default 256 CPU, 2000 else)")
    p.add_argument("--input_batch_size", type=int, default=None, help="input pipeline batch (default 32 CPU, 256 else)")
    p.add_argument("--input_batches", type=int, default=None, help="timed batches (default 10 CPU, 20 else)")
    p.add_argument("--input_image_size", type=int, default=224)
    p.add_argument("--sections", type=_names, default=list(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--mps", choices=("auto", "off"), default="auto", help="CUDA MPS for concurrent runs (auto: if found)")
    p.add_argument("--peak_tflops", type=float, default=None, help="peak per device, for an unknown device kind")
    p.add_argument("--reserve_s", type=float, default=None, help="seconds kept for writing (default max(5, 2%%))")
    p.add_argument("--note", default="", help="a sentence for the report's header (e.g. 'shared machine')")
    p.add_argument("--render", default="", help="only re-render the Markdown of this hardware_report.json")
    p.add_argument("--worker", choices=("probe", "pair"), help=argparse.SUPPRESS)
    p.add_argument("--model", default=PROBE_MODEL, help=argparse.SUPPRESS)  # the pair worker's
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--scan", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--canonical_conv_grad", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--compilation_cache", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker = {"probe": probe_worker, "pair": pair_worker}[args.worker]
        print(json.dumps(worker(args), default=str), flush=True)
        return 0
    if args.render:
        path = pathlib.Path(args.render)
        path.with_suffix(".md").write_text(render_markdown(json.loads(path.read_text())))
        return 0
    return report_machine(args, argv)


if __name__ == "__main__":
    sys.exit(main())
