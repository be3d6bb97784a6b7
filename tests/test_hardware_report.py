"""benchmarks/hardware_report.py: the peak table, the budget planner (fake probes, nothing runs), the
executor's timeouts, the recommendations, and one real short CPU run (structure and budget only:
no timing value is asserted, the machine is shared and noisy)."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from benchmarks import hardware_report as hr

REPO = pathlib.Path(__file__).resolve().parents[1]


def cifar_net(depth: int, scan: bool = False) -> dict:
    n = (depth - 2) // 6
    return {"macs": 4_500_000 * 3 * n, "stages": [n, n, n], "blocks": 3 * n, "convs_per_block": 2,
            "auto_scan": scan, "imagenet": False}


def imagenet_net(stages, macs, bottleneck) -> dict:
    return {"macs": macs, "stages": list(stages), "blocks": sum(stages), "convs_per_block": 3 if bottleneck else 2,
            "auto_scan": False, "imagenet": True}


NETS = {**{f"{kind}{d}": cifar_net(d, scan=sum([(d - 2) // 6] * 3) > 30)
           for kind in ("resnet", "plain") for d in (20, 32, 44, 56, 110, 1202)},
        "resnet18": imagenet_net((2, 2, 2, 2), 1_800_000_000, False),
        "resnet34": imagenet_net((3, 4, 6, 3), 3_600_000_000, False),
        "resnet50": imagenet_net((3, 4, 6, 3), 3_900_000_000, True)}


def fake_probe(platform="cpu", cpu_count=2, step_s=1.0, compile_s=5.0, init_s=4.0, overhead_s=5.0):
    kind = {"cpu": "cpu", "gpu": "NVIDIA H100 80GB HBM3", "tpu": "TPU v5 lite"}[platform]
    return hr.Probe(platform=platform, device_kind=kind, devices=1, cpu_count=cpu_count, overhead_s=overhead_s,
                    init_s=init_s, compile_s=compile_s, step_s=step_s, batch_size=128, nets=NETS)


def settings(**kw):
    return hr.Settings(**kw)


PROBE_DONE = frozenset({hr.step_key("resnet20", "float32", 128)})


def cases_for(probe, s=None):
    s = s or settings()
    return [c for c in hr.build_cases(s, probe) if c.key not in PROBE_DONE]


# ----------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H200", "bfloat16", 989.4), ("NVIDIA H200", "float32", 67.0),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4), ("NVIDIA H100 80GB HBM3", "float32", 67.0),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5), ("NVIDIA H200 NVL", "bfloat16", 835.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0), ("NVIDIA L4", "float32", 30.3),
    ("TPU v5 lite", "bfloat16", 197.0), ("TPU v5", "bfloat16", 459.0), ("TPU v4", "float32", 275.0),
])
def test_peak_table_lookup(kind, dtype, peak):
    value, source = hr.device_peak("gpu" if "NVIDIA" in kind else "tpu", kind, dtype, {})
    assert value == peak and source


def test_peaks_tf32_cpu_given_and_unknown():
    assert hr.f32_default_peak("gpu", "NVIDIA H200") == 494.7  # XLA's float32 convs run as TF32 by default
    assert hr.device_peak("cpu", "cpu", "float32", {"float32": 0.2})[0] == 0.2
    assert hr.device_peak("gpu", "NVIDIA H200", "float32", {}, given=100.0)[0] == 100.0
    value, source = hr.device_peak("gpu", "Some New GPU", "bfloat16", {})
    assert value is None and "--peak_tflops" in source
    assert hr.device_peak("gpu", "NVIDIA A10G", "bfloat16", {})[0] is None  # not the A10's numbers


# ----------------------------------------------------------------------------- planner


def test_plan_on_cpu_skips_what_this_backend_cannot_run_with_reasons():
    probe = fake_probe("cpu", cpu_count=2)
    plan = hr.plan(cases_for(probe), probe, settings(), time_left_s=1e9, done=PROBE_DONE)
    reasons = {c.key: r for c, r in plan.skipped}
    picked = {c.key for c, _ in plan.picked}
    assert "GPU/TPU only" in reasons["step/resnet50/bfloat16/b256"]
    assert "2-core CPU" in reasons["concurrent/resnet20/K4"] and "concurrent/resnet20/K2" in picked
    assert "step/resnet18/float32/b16" in picked and "input_pipeline" in picked
    assert {"compile/resnet20", "compile/resnet1202", "vmap/resnet56/K8"} <= picked
    assert {"pair/resnet20/vjp", "pair/resnet110/vjp", "pair/resnet56/scan", "pair/resnet110/scan"} <= picked
    pair = next(c for c, _ in plan.picked if c.key == "pair/resnet110/vjp")
    assert (pair.vjp, pair.scan) == ("false", "auto")  # VJP off on CPU (its default is on)
    order = [c.key for c, _ in plan.picked]
    assert order.index("pair/resnet56/scan") < order.index("concurrent/resnet20/K2")  # pairs first on a CPU


def test_plan_on_gpu_picks_bf16_imagenet_and_big_k():
    probe = fake_probe("gpu", cpu_count=16, step_s=0.01, compile_s=10.0)
    plan = hr.plan(cases_for(probe), probe, settings(), time_left_s=1e9, done=PROBE_DONE)
    picked = {c.key for c, _ in plan.picked}
    reasons = {c.key: r for c, r in plan.skipped}
    assert {"step/resnet50/bfloat16/b256", "step/resnet34/bfloat16/b256", "concurrent/resnet56/K8",
            "vmap/resnet20/K8", "pair/resnet110/vjp"} <= picked
    pair = next(c for c, _ in plan.picked if c.key == "pair/resnet110/vjp")
    assert pair.vjp == "true"  # the VJP is off by default on a GPU, so the pair turns it on
    order = [c.key for c, _ in plan.picked]
    assert order.index("concurrent/resnet56/K8") < order.index("pair/resnet56/scan")  # packing first on a GPU
    assert set(reasons) == {"step/resnet18/float32/b16"} and "CPU only" in reasons["step/resnet18/float32/b16"]


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("budget", [0, 10, 30, 60, 120, 300, 480, 1000, 5000])
def test_plan_never_exceeds_the_budget(platform, budget):
    probe = fake_probe(platform, cpu_count=2 if platform == "cpu" else 16)
    plan = hr.plan(cases_for(probe), probe, settings(), time_left_s=budget, done=PROBE_DONE)
    assert plan.estimated_s <= budget
    assert len(plan.picked) + len(plan.skipped) == len(cases_for(probe))
    for case, reason in plan.skipped:
        assert reason, case.key
    keys = [c.key for c in cases_for(probe)]
    assert [c.key for c, _ in plan.picked] == [k for k in keys if k in {c.key for c, _ in plan.picked}]  # order kept


def test_plan_with_a_short_budget_skips_by_estimate_and_dependents_say_why():
    probe = fake_probe("cpu")
    cases = cases_for(probe)
    budget = hr.estimate_s(cases[0], probe, settings()) + 1  # room for the first case only
    plan = hr.plan(cases, probe, settings(), time_left_s=budget, done=PROBE_DONE)
    assert [c.key for c, _ in plan.picked][:1] == [cases[0].key]
    reasons = {c.key: r for c, r in plan.skipped}
    assert "budget left" in reasons["step/plain56/float32/b128"]
    nothing = hr.plan(cases, probe, settings(), time_left_s=1, done=PROBE_DONE)
    reasons = {c.key: r for c, r in nothing.skipped}
    assert not nothing.picked and "budget left" in reasons["step/resnet56/float32/b128"]
    assert reasons["concurrent/resnet56/K2"].startswith("needs step/resnet56/float32/b128 (skipped: estimated")
    assert "budget left" in reasons["concurrent/resnet20/K2"]  # its baseline is the probe itself


def test_plan_skips_dependents_of_failed_cases_and_uses_corrections():
    probe = fake_probe("cpu")
    cases = cases_for(probe)
    failed = {"step/resnet56/float32/b128": "timeout: killed after 30 s"}
    remaining = [c for c in cases if c.key not in failed]
    plan = hr.plan(remaining, probe, settings(), 1e9, done=PROBE_DONE, failed=failed)
    reasons = {c.key: r for c, r in plan.skipped}
    assert "timeout" in reasons["concurrent/resnet56/K2"]
    corrections = hr.Corrections()
    step = next(c for c in cases if c.kind == "step")
    corrections.add(step, wall_s=30.0, estimate=10.0)
    slow = hr.plan(remaining, probe, settings(), 1e9, done=PROBE_DONE, failed=failed, corrections=corrections)
    est = {c.key: e for c, e in plan.picked}
    assert all(e == pytest.approx(3 * est[c.key]) for c, e in slow.picked if c.kind == "step")


def test_cost_model_knows_the_cpu_slow_paths_and_scan_compile():
    probe = fake_probe("cpu")
    s = settings()
    on = hr.step_case("x", "resnet110", "float32", 128)
    off = hr.step_case("x", "resnet110", "float32", 128, vjp="false")
    assert hr.step_estimate(probe, off) == pytest.approx(hr.CPU_SCANNED_WITHOUT_VJP * hr.step_estimate(probe, on))
    assert hr.compile_scale(probe, "resnet1202", True) == pytest.approx(hr.compile_scale(probe, "resnet110", True))
    assert hr.compile_scale(probe, "resnet110", False) > hr.compile_scale(probe, "resnet56", False) > 1
    gpu = fake_probe("gpu", cpu_count=16)
    assert hr.step_estimate(gpu, off) == hr.step_estimate(gpu, on)  # no CPU slow path on a GPU
    for case in cases_for(probe):
        assert hr.estimate_s(case, probe, s) > 0


# ----------------------------------------------------------------------------- executor


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_execute_respects_the_deadline_and_records_failures():
    """Cases run 2x slower than estimated, one crashes, one hangs: every timeout ends by the deadline,
    the crash and the hang are recorded, and what is left is skipped with a reason."""
    probe, s = fake_probe("cpu"), settings()
    clock, budget = FakeClock(), 400.0
    timeouts = []

    def runner(case, timeout):
        timeouts.append((clock.t, timeout))
        if case.key == "pair/resnet20/vjp":
            raise RuntimeError("boom")
        true_s = 1e6 if case.key == "step/plain56/float32/b128" else 2 * hr.estimate_s(case, probe, s)
        clock.t += min(true_s, timeout)
        return hr.Outcome("ok", {}) if true_s <= timeout else hr.Outcome("timeout", reason="killed")

    ex = hr.execute(cases_for(probe), probe, s, deadline=budget, run_case=runner, done=PROBE_DONE, now=clock)
    assert clock.t <= budget
    assert all(start + t <= budget + 1e-9 for start, t in timeouts)
    status = {r["key"]: r["status"] for r in ex.records}
    assert status.get("pair/resnet20/vjp") == "failed"
    assert "boom" in next(r["reason"] for r in ex.records if r["key"] == "pair/resnet20/vjp")
    assert status.get("step/plain56/float32/b128") == "timeout"
    assert ex.skipped and all(x["reason"] for x in ex.skipped)
    assert ex.initial_plan and hr.step_key("resnet20", "float32", 128) not in status  # the probe is not re-run


def test_run_commands_kills_a_hung_process_at_its_timeout(tmp_path):
    start = time.monotonic()
    (done,) = hr.run_commands([[sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"]],
                              timeout_s=2, logdir=str(tmp_path))
    assert done.timed_out and time.monotonic() - start < 30 and "hi" in done.stdout
    assert hr.outcome_of([done]).status == "timeout"
    (bad,) = hr.run_commands([[sys.executable, "-c", "import sys; sys.exit('broken')"]], 30, str(tmp_path))
    outcome = hr.outcome_of([bad])
    assert outcome.status == "failed" and "broken" in outcome.reason


# ----------------------------------------------------------------------------- derived results


def test_scan_recommendation():
    rec = hr.scan_recommendation
    assert rec([{"model": "resnet56", "blocks": 27, "verdict": "unrolled"},
                {"model": "resnet110", "blocks": 54, "verdict": "scan"}], 30)["value"] == 30
    both_unrolled = rec([{"model": "resnet56", "blocks": 27, "verdict": "unrolled"},
                         {"model": "resnet110", "blocks": 54, "verdict": "unrolled"}], 30)
    assert both_unrolled["value"] == 54 and not both_unrolled["agrees_with_current"]
    assert rec([{"model": "resnet56", "blocks": 27, "verdict": "scan"},
                {"model": "resnet110", "blocks": 54, "verdict": "scan"}], 30)["value"] == 26
    assert rec([{"model": "resnet56", "blocks": 27, "verdict": "tie"}], 30)["value"] == 30
    assert "inconsistent" in rec([{"model": "resnet56", "blocks": 27, "verdict": "scan"},
                                  {"model": "resnet110", "blocks": 54, "verdict": "unrolled"}], 30)["text"]
    assert rec([], 30)["value"] is None


def test_vjp_recommendation():
    def pair(model, scan, verdict):
        return {"model": model, "scan": scan, "ratio_off_over_on": 1.0, "verdict": verdict}

    assert hr.vjp_recommendation([pair("resnet56", False, "on"), pair("resnet110", True, "on")], "cpu")["value"] is True
    off = hr.vjp_recommendation([pair("resnet56", False, "off"), pair("resnet110", True, "tie")], "gpu")
    assert off["value"] is False and off["agrees_with_current"]
    mixed = hr.vjp_recommendation([pair("resnet56", False, "off"), pair("resnet110", True, "on")], "cpu")
    assert mixed["value"] == "scanned only"
    assert hr.vjp_recommendation([pair("resnet20", False, "tie")], "gpu")["value"] is False  # the default stays


def test_project_step_times_interpolates_in_macs_and_says_so():
    macs = {n: v["macs"] for n, v in NETS.items()}
    measured = {"resnet20": 1.0, "resnet56": 3.0, "resnet110": 6.0, "plain56": 2.4}
    out = hr.project_step_times(measured, macs, hr.FIG6_NETS)
    assert out["resnet56"] == (3.0, "measured")
    assert out["resnet32"][0] == pytest.approx(1.0 + (3.0 - 1.0) * (32 - 20) / (56 - 20))
    assert "interpolated" in out["resnet44"][1]
    assert out["plain32"][0] == pytest.approx(0.8 * out["resnet32"][0]) and "scaled" in out["plain32"][1]
    assert hr.project_step_times({}, macs, ["resnet20"])["resnet20"][0] is None


def test_fig6_projection_applies_the_packing_gain():
    steps = [{"model": m, "dtype": "float32", "replicas": 1, "step_s": s, "case": hr.step_key(m, "float32", 128)}
             for m, s in (("resnet20", 0.01), ("resnet56", 0.02), ("resnet110", 0.04), ("plain56", 0.02))]
    concurrent = [{"model": "resnet20", "k": 4, "dtype": "float32", "gain": 2.0},
                  {"model": "resnet56", "k": 4, "dtype": "float32", "gain": 1.5}]
    f = hr.fig6_projection(steps, NETS, concurrent, measured_batch=128)
    assert len(f["runs"]) == 9 and f["batch_size"] == 128
    assert f["best_k"] == 4 and f["best_wall_s"] < f["sequential_wall_s"] == f["wall_s"]["1"]


# ----------------------------------------------------------------------------- a real run


def test_real_cpu_run_writes_the_report_within_its_budget(tmp_path):
    """The whole command on this CPU with a 90 s budget and tiny steps: the probe, then the scan/VJP
    pairs, packing and input-pipeline sections as far as the budget goes (their subprocess paths),
    skips with reasons, JSON + Markdown."""
    budget = 90
    out = tmp_path / "report"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.hardware_report", f"--budget_s={budget}", f"--out={out}",
         "--batch_size=8", "--steps=1", "--warmup=0", "--num_examples=256", "--devices=1",
         "--sections=ablation,packing,input", "--vmap=1,2", "--input_images=32", "--input_batch_size=8",
         "--input_batches=2", "--note=test run"],
        cwd=REPO, capture_output=True, text=True, timeout=budget + 120, check=False)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert took <= budget + 30, f"{took:.0f} s for a {budget} s budget"
    report = json.loads((out / "hardware_report.json").read_text())
    assert {"machine", "peaks", "settings", "probe", "steps", "compile", "packing", "ablation", "fig6",
            "input_pipeline", "cases", "skipped", "failed", "budget_s", "elapsed_s", "load_avg_before",
            "load_avg_after", "initial_plan"} <= set(report)
    assert report["elapsed_s"] <= budget + 10
    assert report["machine"]["platform"] == "cpu" and report["machine"]["jax"]
    assert report["packing"]["mps"]["used"] is False
    assert report["steps"][0]["model"] == "resnet20" and report["steps"][0]["step_s"] > 0
    assert {"concurrent", "vmap"} <= set(report["packing"])
    skipped = {s["key"]: s["reason"] for s in report["skipped"]}
    if os.cpu_count() < 4:
        assert "cpu" in skipped["concurrent/resnet20/K4"].lower()  # K > cores
    assert all(skipped.values())
    for case in report["cases"]:
        assert case["status"] in ("ok", "failed", "timeout") and case["wall_s"] <= budget
    markdown = (out / "hardware_report.md").read_text()
    for heading in ("# Hardware report", "## Training step", "## Fig. 6 sweep wall time", "### Skipped", "load average"):
        assert heading in markdown
    assert "| net | batch | dtype |" in markdown
    proc = subprocess.run([sys.executable, "-m", "benchmarks.hardware_report",
                           f"--render={out / 'hardware_report.json'}"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and (out / "hardware_report.md").read_text() == markdown


# ----------------------------------------------------------------------------- the GPU paths, on fake results

H100 = "NVIDIA H100 80GB HBM3"


def fake_result(model, dtype="float32", batch=128, step=0.01, scan=False, vjp=False, replicas=1):
    """A benchmarks.throughput JSON row as a GPU would give it."""
    macs = NETS[model]["macs"]
    return {"model": model, "batch_size": batch, "dtype": dtype, "replicas": replicas, "scan": scan,
            "canonical_conv_grad": vjp, "step_s": step, "step_s_min": step, "step_s_max": step,
            "img_per_s": batch * replicas / step, "tflops": 6 * macs * batch * replicas / step / 1e12,
            "compile_s": 20.0, "peak_bytes": 3 * 2**30, "temp_bytes": 2**28, "macs_per_image": macs,
            "load_avg": [1.0, 1.0, 1.0], "platform": "gpu", "device_kind": H100, "devices": 1, "init_s": 3.0,
            "lower_s": 1.0}


def record(key, kind, data, status="ok"):
    return {"key": key, "kind": kind, "section": "x", "status": status, "estimate_s": 10.0, "timeout_s": 40.0,
            "wall_s": 9.0, "reason": "" if status == "ok" else "exit 1: boom", "data": data}


def test_assemble_and_render_a_fake_gpu_report():
    probe = fake_probe("gpu", cpu_count=16, step_s=0.01)
    probe = hr.Probe(**{**probe.__dict__, "device_kind": H100})
    s = settings(steps=20, warmup=5)
    worker = {"machine": {"platform": "gpu", "device_kind": H100, "device_count": 1, "devices_present": 8,
                          "jax": "0.10.2", "jaxlib": "0.10.2", "platform_version": "cuda 12.8", "memory_stats": True,
                          "bytes_limit": 80 * 2**30, "cpu_count": 16, "python": "3.11", "host_cpu": "Xeon, 16 cores"},
              "nets": NETS, "cpu_peaks": {}, "result": fake_result("resnet20"), "steps": 20, "warmup": 5,
              "wall_s": 30.0}
    runs = [fake_result("resnet20", step=0.012), fake_result("resnet20", step=0.014)]
    records = [
        record("step/resnet56/float32/b128", "step", fake_result("resnet56", step=0.02)),
        record("step/plain56/float32/b128", "step", fake_result("plain56", step=0.018)),
        record("step/resnet110/float32/b128", "step", fake_result("resnet110", step=0.05, scan=True)),
        record("pair/resnet110/scan", "pair", {"a": fake_result("resnet110", step=0.05, scan=True),
                                               "b": fake_result("resnet110", step=0.04), "ratio_b_over_a": 0.8}),
        record("pair/resnet56/scan", "pair", {"a": fake_result("resnet56", step=0.02),
                                              "b": fake_result("resnet56", step=0.03, scan=True),
                                              "ratio_b_over_a": 1.5}),
        record("pair/resnet110/vjp", "pair", {"a": fake_result("resnet110", step=0.05, scan=True),
                                              "b": fake_result("resnet110", step=0.07, scan=True, vjp=True),
                                              "ratio_b_over_a": 1.4}),
        record("step/resnet50/bfloat16/b256", "step", fake_result("resnet50", "bfloat16", 256, step=0.2)),
        record("concurrent/resnet20/K2", "concurrent", {"runs": runs, "mem_fraction": "0.45", "mps": True}),
        record("vmap/resnet20/K4", "vmap", fake_result("resnet20", step=0.02, replicas=4)),
        record("compile/resnet20", "compile", {"model": "resnet20", "batch_size": 128, "dtype": "float32",
                                               "scan": False, "lower_s": 1.0, "compile_s": 20.0,
                                               "compile_s_cached": 1.0, "init_s": 5.0, "init_s_cached": 0.5,
                                               "load_avg": [1.0]}),
        record("input_pipeline", "input", {"images_per_s": 2000.0, "batch_size": 256, "image_size": 224,
                                           "mean_jpeg_kb": 90.0, "cpus": 16, "load_avg": 1.0}),
        record("compile/resnet1202", "compile", None, status="failed"),
    ]
    execution = hr.Execution(records, [{"key": "step/resnet18/float32/b16", "section": "imagenet",
                                        "reason": "CPU only: ..."}], [])
    meta = {"command": ["python", "-m", "benchmarks.hardware_report"], "started": "t0", "finished": "t1",
            "budget_s": 480.0, "elapsed_s": 470.0, "load_avg_before": [1, 1, 1], "load_avg_after": [1, 1, 1],
            "driver": "570.1", "note": "", "mps": {"available": True, "used": True, "note": "used"}}
    report = hr.assemble(meta, worker, probe, s, execution)
    json.dumps(report)  # JSON-able
    r50 = next(r for r in report["steps"] if r["model"] == "resnet50")
    assert r50["peak_tflops"] == 989.4 and r50["pct_of_peak"] == pytest.approx(100 * r50["tflops"] / 989.4)
    r20 = report["steps"][0]
    assert r20["peak_tflops"] == 67.0 and r20["pct_of_f32_default_peak"] == pytest.approx(100 * r20["tflops"] / 494.7)
    (conc,) = report["packing"]["concurrent"]
    assert conc["gain"] == pytest.approx((128 / 0.012 + 128 / 0.014) / (128 / 0.01)) and conc["mps"]
    (vm,) = report["packing"]["vmap"]
    assert vm["k"] == 4 and vm["gain"] == pytest.approx(2.0)
    assert [p["ratio_unrolled_over_scan"] for p in report["ablation"]["scan_pairs"]] == [0.8, pytest.approx(1 / 1.5)]
    assert report["ablation"]["vjp_pairs"][0]["ratio_off_over_on"] == pytest.approx(1 / 1.4)
    rec = report["ablation"]["recommendation"]
    assert rec["scan_auto_max_unrolled_blocks"]["value"] == 54  # unrolled won at 27 and 54 blocks
    assert rec["canonical_conv_grad"]["value"] is False  # the VJP lost on the GPU: keep it off
    assert report["fig6"]["best_k"] == 2 and len(report["fig6"]["runs"]) == 9
    assert report["input_pipeline"]["consumers"][0]["model"] == "resnet50"
    assert report["failed"] == [{"key": "compile/resnet1202", "status": "failed", "reason": "exit 1: boom"}]
    markdown = hr.render_markdown(report)
    for text in ("NVIDIA H100 80GB HBM3", "570.1", "of TF32", "GiB peak", "CUDA MPS: used", "K vmapped replicas",
                 "SCAN_AUTO_MAX_UNROLLED_BLOCKS = 54", "pipeline / step", "best packing measured: K = 2"):
        assert text in markdown, text


def test_paired_verdict_needs_medians_and_pairs_to_agree():
    assert hr.paired_verdict(1.0, 1.5, 1.4, "scan", "unrolled") == "scan"
    assert hr.paired_verdict(2.18, 2.10, 1.08, "scan", "unrolled") == "tie"  # medians: unrolled by 4%, pairs: scan
    assert hr.paired_verdict(1.0, 0.5, 0.6, "on", "off") == "off"


def test_the_budget_counts_from_the_start_of_the_process():
    assert 0 < hr.process_age_s() < 24 * 3600
