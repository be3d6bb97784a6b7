"""Benchmark scripts run and report what they promise (nothing is timed here), and the training step
compiles once: no recompilation after the first step."""
import functools
import json
import logging
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import models, optim, sharding, step as step_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

KEYS = {"model", "batch_size", "dtype", "step_s", "img_per_s", "compile_s", "lower_s", "replicas", "peak_bytes",
        "tflops", "frac_of_peak", "device_kind", "load_avg"}


def run_script(module, *args, timeout=180):
    """`python -m benchmarks.MODULE ARGS` from the repository root, as the README runs them."""
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_throughput_script_emits_one_json_line_per_configuration():
    proc = run_script("throughput", "--model=resnet8", "--batch_size=8", "--replicas=1,2", "--pack=unroll",
                      "--steps=2", "--warmup=0", "--num_examples=64", "--devices=1", "--peak_tflops=2", "--json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["model"], r["replicas"], r["pack"]) for r in rows] == [("resnet8", 1, None), ("resnet8", 2, "unroll")]
    for r in rows:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["batch_size"] == 8 and r["dtype"] == "float32" and r["devices"] == 1 and r["steps_timed"] == 2
        assert r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
        assert r["img_per_s"] == pytest.approx(8 * r["replicas"] / r["step_s"])
        assert r["macs_per_image"] == 12_239_488
        assert r["tflops"] == pytest.approx(6 * r["macs_per_image"] * 8 * r["replicas"] / r["step_s"] / 1e12)
        assert r["frac_of_peak"] == pytest.approx(r["tflops"] / 2)  # --peak_tflops=2 per device, 1 device
    assert "img/s" in proc.stderr and "load average" in proc.stderr  # the table


def test_compile_time_script_reports_cold_and_cached_compiles(monkeypatch, capsys):
    """Each net is measured twice on one fresh cache directory (cold, then cached); nothing runs here."""
    from benchmarks import compile_time

    calls = []

    def fake_measure(model, batch_size, scan, cache_dir, timeout, devices=0):
        calls.append((model, cache_dir))
        cold = len(calls) % 2 == 1
        return {"dtype": "float32", "scan": model == "resnet1202", "devices": 1, "device_kind": "cpu",
                "lower_s": 0.5, "compile_s": 5.0 if cold else 0.3, "init_s": 8.0 if cold else 0.6, "load_avg": [1.0]}

    monkeypatch.setattr(compile_time, "measure", fake_measure)
    assert compile_time.main(["--model=resnet20,resnet1202", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["compile_s"], r["compile_s_cached"], r["scan"]) for r in rows] == [
        ("resnet20", 5.0, 0.3, False), ("resnet1202", 5.0, 0.3, True)]
    assert calls[0][1] == calls[1][1] != calls[2][1] == calls[3][1]  # one cache per net, shared by its two runs


def test_sweep_time_extrapolates_round_robin_slots():
    from benchmarks import sweep_time

    assert sweep_time.makespan([3.0, 1.0, 2.0], 1) == 6.0
    assert sweep_time.makespan([3.0, 1.0, 2.0], 2) == 5.0  # slot 0: runs 0 and 2, as launch.sh assigns them
    from resnet_jax import sweep

    (run,), _ = sweep.list_runs(str(REPO / "configs/cifar10_degradation.py:run=resnet-110"))
    config = sweep.resolve_config(run.config)
    assert sweep_time.model_name(config) == "resnet110"
    # 64k steps, 64 evaluations of 10k images (a third of a step per image), plus compile.
    assert sweep_time.run_cost(config, 1.0, 10.0) == pytest.approx(64_000 + 64 * 10_000 / 128 / 3 + 10.0)


def test_torch_reference_runs():
    pytest.importorskip("torch")
    proc = run_script("torch_reference", "--model=resnet8", "--batch_size=8", "--steps=1", "--warmup=0",
                      "--num_examples=64", "--json")
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"model", "batch_size", "dtype", "step_s", "img_per_s", "compile_s"} <= set(row)


def test_benchmark_models_match_the_paper_nets():
    from benchmarks import throughput

    assert throughput.parse_model("plain56") == dict(depth=56, residual=False, shortcut="A", preact=False,
                                                     bottleneck=False)
    assert throughput.parse_model("resnet14")["depth"] == 14
    assert throughput.make_config("resnet1202", 128).model.depth == 1202
    assert throughput.parse_model("resnet50") == dict(imagenet=True, depth=50, residual=True)
    config = throughput.make_config("plain34", 256, "bfloat16")
    assert (config.model.family, config.model.depth, config.model.residual, config.dataset) == \
        ("imagenet", 34, False, "imagenet2012")
    with pytest.raises(ValueError, match="6n\\+2"):
        throughput.parse_model("resnet21")


class _CompileLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.names = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split()[1])


def test_train_step_compiles_once():
    """The state the step returns has the shardings, dtypes and weak types of the one it takes, so
    jit never compiles the step again after the first call (a second compile per run would cost
    seconds to minutes for deep nets, and a recompile per step would make training crawl)."""
    from benchmarks import throughput

    config = throughput.make_config("resnet8", 16)
    config.log_every = 2
    mesh = sharding.make_mesh(jax.devices()[:2])
    model, tx = models.from_config(config.model, 10), optim.make_optimizer(config)
    state = jax.jit(functools.partial(step_lib.init_state, config, model, tx, 10),
                    out_shardings=NamedSharding(mesh, P()))()
    data = throughput.random_device_data(mesh, 64, 16, eval_batch_size=16, num_test=16)
    step_fn = step_lib.make_train_step(config, model, tx, mesh, data)
    log = _CompileLog()
    logger = logging.getLogger("jax._src.interpreters.pxla")
    logger.addHandler(log)
    try:
        with jax.log_compiles():
            for _ in range(4):  # crosses a log boundary (the metric sums restart)
                state = step_fn(state, data.train)
            jax.block_until_ready(state)
    finally:
        logger.removeHandler(log)
    assert step_fn._cache_size() == 1
    assert log.names.count("jit(train_step)") == 1, log.names
    assert int(state.step) == 4


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_input_pipeline_benchmark_reports_images_per_second(tmp_path, mode):
    proc = run_script("input_pipeline", f"--data_dir={tmp_path}", "--num_images=48", "--batch_size=8",
                      "--batches=2", "--warmup=1", "--image_size=64", "--shuffle_buffer=16", "--json",
                      *(["--eval"] if mode == "eval" else []))
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["pipeline"] == mode and row["split"] == ("validation" if mode == "eval" else "train")
    assert row["images_per_s"] > 0 and row["batches"] == (1 if mode == "eval" else 2)
    assert row["mean_megapixels"] > 0.15 and row["mean_jpeg_kb"] > 1  # ImageNet-size images


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_throughput_of_an_imagenet_net_runs_the_streamed_step():
    proc = run_script("throughput", "--model=resnet18", "--batch_size=8", "--steps=1", "--warmup=0",
                      "--devices=2", "--json")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["model"] == "resnet18" and row["macs_per_image"] == 1_794_805_760  # option A: 1.8G, no projections
    assert row["img_per_s"] > 0 and row["devices"] == 2
