"""Diagnostics: layer responses (Fig. 7), gradient flow, residual-branch ratios; their logging and plots."""
import dataclasses
import functools
import json
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import REPO, env_with_devices, read_jsonl, run_main, TINY
from resnet_jax import diagnostics as D
from resnet_jax import metric_writers, models, optim, run_dir, sharding, step
from resnet_jax.data import cifar as ip
from resnet_jax.config_args import load_config_module

_NHWC = ("NHWC", "HWIO", "NHWC")


def images(n=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, 32, 32, 3))


def randomized(model, seed=0):
    """Variables with random BN statistics and affine parameters, so eval-mode BN is not the identity."""
    v = flax.core.unfreeze(model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(v)
    for k, a in flat.items():
        if k[-1] in ("mean", "bias"):
            flat[k] = jnp.asarray(rng.normal(0, 0.2, a.shape), jnp.float32)
        elif k[-1] in ("var", "scale"):
            flat[k] = jnp.asarray(rng.uniform(0.5, 2.0, a.shape), jnp.float32)
    return flax.traverse_util.unflatten_dict(flat)


def stack_blocks(tree, stages):
    """Unrolled layout -> scanned layout (blocks 2..n of stage i stacked as stage{i}_blocks)."""
    tree = dict(tree)
    for i, n in enumerate(stages, 1):
        rest = [tree.pop(f"stage{i}_block{b}") for b in range(2, n + 1)]
        tree[f"stage{i}_blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *rest)
    return tree


def jitted(fn, model):
    return jax.jit(functools.partial(fn, model))


def direct_depth8(v, x, residual):
    """conv -> BN (running statistics) by hand, no flax: (response stds, branch ratios) of a depth-8 net."""
    p, s = v["params"], v["batch_stats"]
    conv = lambda x, w, st: jax.lax.conv_general_dilated(x, w, (st, st), [(1, 1), (1, 1)], dimension_numbers=_NHWC)
    bn = lambda x, name, blk=None: ((x - (s[blk][name] if blk else s[name])["mean"])
                                    / jnp.sqrt((s[blk][name] if blk else s[name])["var"] + 1e-5)
                                    * (p[blk][name] if blk else p[name])["scale"]
                                    + (p[blk][name] if blk else p[name])["bias"])
    responses, ratios = [], []
    r = bn(conv(x, p["stem_conv"]["kernel"], 1), "stem_bn")
    responses.append(r)
    h = jax.nn.relu(r)
    for i, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        blk = f"stage{i}_block1"
        r1 = bn(conv(h, p[blk]["conv1"]["kernel"], stride), "bn1", blk)
        r2 = bn(conv(jax.nn.relu(r1), p[blk]["conv2"]["kernel"], 1), "bn2", blk)
        responses += [r1, r2]
        sc = h[:, ::stride, ::stride, :]
        sc = jnp.pad(sc, ((0, 0), (0, 0), (0, 0), (0, width - sc.shape[-1])))
        ratios.append(jnp.linalg.norm(r2.ravel()) / jnp.linalg.norm(sc.ravel()))  # over the whole batch
        h = jax.nn.relu(r2 + sc if residual else r2)
    return np.array([np.std(np.asarray(r)) for r in responses]), np.array(ratios)


@pytest.mark.parametrize("residual", [True, False])
def test_response_std_and_branch_ratio_match_a_direct_computation(residual):
    model = models.create_model("cifar", depth=8, residual=residual)
    v, x = randomized(model), images()
    stds, ratios = direct_depth8(v, x, residual)
    np.testing.assert_allclose(jitted(D.layer_responses, model)(v, x), stds, rtol=2e-4)
    np.testing.assert_allclose(jitted(D.branch_ratios, model)(v, x), ratios, rtol=2e-4)
    # the chunk-combinable form used by plot_layer_responses gives the same stds
    m = jitted(D.response_moments, model)(v, x)
    np.testing.assert_allclose(np.sqrt(m["mean_square"] - m["mean"] ** 2), stds, rtol=2e-3)
    np.testing.assert_allclose(np.sqrt(m["branch_mean_square"] / m["shortcut_mean_square"]), ratios, rtol=2e-4)
    assert D.layer_names(model)["response"] == [
        "stem", "stage1_block1/conv1", "stage1_block1/conv2", "stage2_block1/conv1", "stage2_block1/conv2",
        "stage3_block1/conv1", "stage3_block1/conv2"]


def loss_by_hand(model, params, batch_stats, x, labels):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_gradient_norms_match_jax_grad_unrolled_and_scanned():
    x, labels = images(), jnp.array([0, 3, 5, 9])
    # depth 14, scanned: blocks 2 of each stage are stacked; the lists come out per block
    model = models.create_model("cifar", depth=14, scan=True)
    v = randomized(model)
    grad, weight = jitted(D.gradient_norms, model)(v["params"], v["batch_stats"], x, labels)
    g = jax.jit(jax.grad(functools.partial(loss_by_hand, model)))(v["params"], v["batch_stats"], x, labels)
    expected = [("stem_conv", None, "stem_conv")]
    for i in (1, 2, 3):
        expected += [(f"stage{i}_block1/conv{c}", None, f"stage{i}_block1") for c in (1, 2)]
        expected += [(f"stage{i}_block2/conv{c}", 0, f"stage{i}_blocks") for c in (1, 2)]
    expected.append(("fc", None, "fc"))
    assert D.layer_names(model)["grad"] == [n for n, _, _ in expected]
    by_hand, weights = [], []
    for name, index, module in expected:
        leaf = "conv" + name[-1] if "/" in name else None
        gk = g[module][leaf]["kernel"] if leaf else g[module]["kernel"]
        wk = v["params"][module][leaf]["kernel"] if leaf else v["params"][module]["kernel"]
        by_hand.append(np.linalg.norm(gk if index is None else gk[index]))
        weights.append(np.linalg.norm(wk if index is None else wk[index]))
    np.testing.assert_allclose(grad, by_hand, rtol=1e-4)
    np.testing.assert_allclose(weight, weights, rtol=1e-5)

    # the unrolled twin with the same weights gives the same lists
    unrolled = model.clone(scan=False)
    vu = jax.tree.map(lambda a: a, v)
    for col in ("params", "batch_stats"):
        stacked = vu[col]
        for i in (1, 2, 3):
            stacked[f"stage{i}_block2"] = jax.tree.map(lambda a: a[0], stacked.pop(f"stage{i}_blocks"))
    grad_u, weight_u = jitted(D.gradient_norms, unrolled)(vu["params"], vu["batch_stats"], x, labels)
    np.testing.assert_allclose(grad_u, grad, rtol=2e-4)
    np.testing.assert_allclose(weight_u, weight, rtol=1e-6)
    fwd_u, fwd_s = jitted(D.forward_diagnostics, unrolled)(vu, x), jitted(D.forward_diagnostics, model)(v, x)
    np.testing.assert_allclose(fwd_u["response_std"], fwd_s["response_std"], rtol=2e-4)
    np.testing.assert_allclose(fwd_u["branch_ratio"], fwd_s["branch_ratio"], rtol=2e-4)


def test_projection_shortcuts_and_preact_in_network_order():
    names = D.layer_names(models.create_model("cifar", depth=8, shortcut="B"))["grad"]
    assert names.index("stage2_block1/proj_conv") == names.index("stage2_block1/conv2") + 1
    assert names[-1] == "fc" and names[0] == "stem_conv"
    preact = D.layer_names(models.create_model("preact_resnet110"))
    assert len(preact["response"]) == 108 and preact["response"][0] == "stage1_block1/conv1"  # no BN'd stem
    assert len(preact["block"]) == 54 and preact["block"][1] == "stage1_block2"
    assert len(D.layer_names(models.create_model("resnet56"))["response"]) == 55  # Fig. 7: depth - 1 layers


def test_zeroed_residual_branch_has_ratio_zero():
    x = images()
    model = models.create_model("cifar", depth=8, zero_init_residual=True)  # last BN scale of each branch = 0
    v = model.init(jax.random.key(0), x, train=False)
    np.testing.assert_array_equal(jitted(D.branch_ratios, model)(v, x), 0.0)
    # one block of a scanned net zeroed (a stacked entry): only that block is the identity
    model = models.create_model("cifar", depth=14, scan=True)
    v = randomized(model)
    v["params"]["stage2_blocks"]["bn2"]["scale"] = v["params"]["stage2_blocks"]["bn2"]["scale"].at[0].set(0.0)
    v["params"]["stage2_blocks"]["bn2"]["bias"] = v["params"]["stage2_blocks"]["bn2"]["bias"].at[0].set(0.0)
    ratios = np.asarray(jitted(D.branch_ratios, model)(v, x))
    assert D.layer_names(model)["block"][3] == "stage2_block2"
    assert ratios[3] == 0.0 and np.all(np.delete(ratios, 3) > 0.1)
    preact = models.create_model("cifar", depth=8, preact=True, zero_init_residual=True)  # last conv kernel = 0
    v = preact.init(jax.random.key(0), x, train=False)
    np.testing.assert_array_equal(jitted(D.branch_ratios, preact)(v, x), 0.0)


def small_config(**overrides):
    c = load_config_module(REPO / "configs" / "cifar10.py").get_config("depth=8")
    c.batch_size, c.log_every, c.diagnostics_batch = 16, 2, 16
    c.update(overrides)
    return c


def random_cifar(mesh, n_train=64, n_test=40, eval_batch=16):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train).astype(np.int32)
    return ip.build(imgs, labels, imgs[:n_test], labels[:n_test], num_classes=10, batch_size=16,
                    eval_batch_size=eval_batch, mesh=mesh)


def test_diagnostics_never_recompile_nor_change_the_training_step():
    config = small_config(diagnostics_every=1)
    mesh = sharding.make_mesh()
    model, tx = models.from_config(config.model, 10), optim.make_optimizer(config)
    data = random_cifar(mesh)
    init = jax.jit(lambda: step.init_state(config, model, tx, 10), out_shardings=NamedSharding(mesh, P()))
    step_fn = step.make_train_step(config, model, tx, mesh, data)
    diag = D.Diagnostics(config, model, mesh, data)
    assert diag.batch.train_images.shape == (16, 32, 32, 3) and diag.batch.test_images.shape == (16, 32, 32, 3)
    state, records = init(), [diag(init())]
    for _ in range(3):
        state = step_fn(state, data.train)
        records.append(diag(state))
    assert step_fn._cache_size() == 1 and diag.fn._cache_size() == 1  # one compile each, nothing after
    reference = init()
    for _ in range(3):
        reference = step_fn(reference, data.train)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(reference.params))
    assert step_fn._cache_size() == 1
    # the records: per-layer lists in network order plus summaries; the batch is the first test images
    r = records[-1]
    assert len(r["diagnostics/grad_norm"]) == 8 and len(r["diagnostics/response_std"]) == 7
    assert len(r["diagnostics/branch_ratio"]) == 3 and r["diagnostics/branch_ratio_max"] > 0
    np.testing.assert_allclose(r["diagnostics/grad_to_weight"],
                               np.array(r["diagnostics/grad_norm"]) / np.array(r["diagnostics/weight_norm"]), rtol=1e-5)
    test_images = np.concatenate([np.asarray(images) for images, _, _ in data.test_batches])
    first_images = ip.normalize(test_images[:16], data.mean)
    np.testing.assert_allclose(diag.batch.test_images, first_images, atol=1e-6)
    assert records[0] != records[1]  # the weights changed, and so did the diagnostics
    assert [diag.due(s) for s in (0, 1, 2)] == [True, True, True]


def test_due_steps():
    mesh = sharding.make_mesh(jax.devices()[:1])
    data = random_cifar(mesh)
    model = models.from_config(small_config().model, 10)
    due = lambda every, steps: [s for s in range(steps + 1) if D.Diagnostics(
        small_config(diagnostics_every=every, num_train_steps=steps), model, mesh, data).due(s)]
    assert due(4, 10) == [0, 4, 8, 10]      # step 0, every 4, and the last step
    assert due(100, 10) == [10]             # a run shorter than one interval: once, at its end
    assert D.Diagnostics(small_config(diagnostics_every=0), model, mesh, data).due(0) is False


def test_jsonl_lists_and_wandb_per_layer_keys(tmp_path):
    metrics = {"train/loss": 1.0, "diagnostics/grad_norm": [np.float32(0.5), 1.5, 2.5]}
    writer = metric_writers.JsonlWriter(str(tmp_path), 0)
    writer.write(5, metrics)
    writer.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 5, "train/loss": 1.0,
                                                        "diagnostics/grad_norm": [0.5, 1.5, 2.5]}]
    logged = metric_writers.wandb_metrics(metrics)
    assert {k: v for k, v in logged.items() if not k.endswith("_hist")} == {
        "train/loss": 1.0, "diagnostics/grad_norm/0000": 0.5, "diagnostics/grad_norm/0001": 1.5,
        "diagnostics/grad_norm/0002": 2.5}
    import wandb

    assert isinstance(logged["diagnostics/grad_norm_hist"], wandb.Histogram)


# ----------------------------------------------------------------------------- real tiny runs and the plots


@pytest.fixture(scope="module")
def tiny_sweep(tfds_data_dir, tmp_path_factory):
    """plain-8 and resnet-8, 10 steps on real images, diagnostics at steps 0, 5, 10, compiles logged."""
    sweep = tmp_path_factory.mktemp("diag_sweep")
    procs = {}
    for name, arg in (("plain-8", "depth=8,residual=false"), ("resnet-8", "depth=8")):
        procs[name] = run_main(sweep / name, f"--config.data_dir={tfds_data_dir}",
                               *[a for a in TINY if "checkpoint_every" not in a], "--config.num_train_steps=10",
                               "--config.diagnostics_every=5", "--config.diagnostics_batch=32",
                               "--config.checkpoint_every=5", config=f"configs/cifar10.py:{arg}", devices=2,
                               env=env_with_devices(2, JAX_LOG_COMPILES="1",
                                                    WANDB_MODE="offline" if name == "resnet-8" else "disabled"))
    return sweep, procs


def test_training_logs_diagnostics_and_compiles_each_program_once(tiny_sweep):
    sweep, procs = tiny_sweep
    for name, proc in procs.items():
        log = proc.stdout + proc.stderr
        assert log.count("Compiling jit(train_step) ") == 1, name  # diagnostics at steps 0, 5, 10: no recompile
        assert log.count("Compiling jit(diagnostics) ") == 1, name
        assert "diagnostics (compilation included) took" in proc.stdout
        records = read_jsonl(sweep / name / "metrics.jsonl")
        diag = [r for r in records if "diagnostics/grad_norm" in r]
        assert [r["step"] for r in diag] == [0, 5, 10]
        assert set(diag[0]) == {"step"} | {k for k in diag[0] if k.startswith("diagnostics/")}
        assert "train/loss" in diag[1] and "test/error" in diag[2]  # merged into the step's record
        names = json.loads((sweep / name / run_dir.LAYERS_FILE).read_text())
        for r in diag:
            assert len(r["diagnostics/grad_norm"]) == len(names["grad"]) == 8
            assert len(r["diagnostics/response_std"]) == len(names["response"]) == 7
            assert len(r["diagnostics/branch_ratio"]) == len(names["block"]) == 3
            assert all(np.isfinite(r["diagnostics/grad_norm"])) and min(r["diagnostics/grad_norm"]) > 0


def test_wandb_gets_one_series_per_layer_and_histograms(tiny_sweep):
    sweep, _ = tiny_sweep
    from helpers import read_wandb_offline_run

    run_files = list((sweep / "resnet-8" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    history, _, _ = read_wandb_offline_run(run_files[0])
    rows = {h["_step"]: h for h in history if "diagnostics/grad_norm/0000" in h}
    assert sorted(rows) == [0, 5, 10]
    ours = {r["step"]: r for r in read_jsonl(sweep / "resnet-8" / "metrics.jsonl")}
    for at, row in rows.items():
        for q in ("grad_norm", "grad_to_weight", "response_std", "branch_ratio"):
            values = ours[at][f"diagnostics/{q}"]
            assert [row[f"diagnostics/{q}/{i:04d}"] for i in range(len(values))] == values
            assert f"diagnostics/{q}/{len(values):04d}" not in row
        assert row["diagnostics/branch_ratio_mean"] == ours[at]["diagnostics/branch_ratio_mean"]
        assert any(k.startswith("diagnostics/grad_norm_hist") for k in row)  # a wandb.Histogram


def run_script(name, *args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "experiments" / name), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env_with_devices(1))


def test_plot_layer_responses_from_checkpoints(tiny_sweep, tmp_path):
    sweep, _ = tiny_sweep
    proc = run_script("plot_layer_responses.py", sweep, "--step", 10, "--num_images", 64, "--branch",
                      "--out", tmp_path / "fig7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fig7.png").stat().st_size > 10_000 and (tmp_path / "fig7.pdf").exists()
    results = json.loads((tmp_path / "fig7.json").read_text())
    assert [(r["name"], r["step"], len(r["response_std"]), len(r["branch_ratio"])) for r in results] == [
        ("plain-8", 10, 7, 3), ("resnet-8", 10, 7, 3)]
    proc = run_script("plot_layer_responses.py", sweep, "--step", 7)
    assert proc.returncode == 2 and "no checkpoint for step 7" in proc.stderr


def test_plot_gradient_flow_from_metrics(tiny_sweep, tmp_path):
    sweep, _ = tiny_sweep
    proc = run_script("plot_gradient_flow.py", sweep, "--out", tmp_path / "flow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "flow.png").stat().st_size > 10_000 and (tmp_path / "flow.pdf").exists()
    sys.path.insert(0, str(REPO))
    from experiments import plot_gradient_flow as pgf

    runs = pgf.load_local([str(sweep)])
    assert pgf.pick_steps(runs) == [0, 5, 10]
    fig = pgf.plot(runs, [0, 10])
    gids = {line.get_gid() for ax in fig.axes for line in ax.lines}
    assert {"plain-8/grad_norm/0", "resnet-8/branch_ratio/10"} <= gids
    line = next(l for ax in fig.axes for l in ax.lines if l.get_gid() == "resnet-8/grad_norm/10")
    assert len(line.get_xdata()) == 7  # conv layers; the classifier is left out
    proc = run_script("plot_gradient_flow.py", sweep, "--steps", "3")
    assert proc.returncode == 2 and "no diagnostics at step(s) [3]" in proc.stderr


class _FakeWandbRun:
    def __init__(self, name, depth, residual):
        self.name, self.config, self.url = name, {"model": {"depth": depth, "residual": residual}}, name
        self.rows = [{"_step": 5, "train/error": 0.5}]
        for at in (0, 10):
            row = {"_step": at}
            row.update(metric_writers.wandb_metrics({"diagnostics/grad_norm": [1.0, 2.0, 3.0 + at],
                                                     "diagnostics/branch_ratio": [0.5, 0.25]}))
            self.rows.append({k: v for k, v in row.items() if not k.endswith("_hist")})

    def scan_history(self, keys=None):
        return [dict(r) for r in self.rows]


class _FakeApi:
    def runs(self, path, filters):
        return [_FakeWandbRun("resnet-20", 20, True), _FakeWandbRun("plain-20", 20, False)]


def test_gradient_flow_from_wandb_rows():
    sys.path.insert(0, str(REPO))
    from experiments import plot_gradient_flow as pgf

    runs = pgf.load_wandb("me/proj", "g", api=_FakeApi())
    assert [sorted(r.steps) for r in runs] == [[0, 10], [0, 10]]
    assert runs[0].steps[10]["grad_norm"] == [1.0, 2.0, 13.0]
    np.testing.assert_array_equal(runs[0].values(10, "grad_norm"), [1.0, 2.0])  # the last one (fc) left out
    fig = pgf.plot(runs, [0, 10], ["grad_norm", "branch_ratio"])
    assert len(fig.axes) == 4


# ----------------------------------------------------------------------------- other families, blocks and norms


def direct_no_bn_depth8(v, x, residual):
    """A depth-8 net without normalisation by hand: conv + bias everywhere; (response stds, branch ratios)."""
    p = v["params"]
    conv = lambda x, c, st: jax.lax.conv_general_dilated(x, c["kernel"], (st, st), [(1, 1), (1, 1)],
                                                         dimension_numbers=_NHWC) + c["bias"]
    r = conv(x, p["stem_conv"], 1)
    responses, ratios, h = [r], [], jax.nn.relu(r)
    for i, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        blk = p[f"stage{i}_block1"]
        r1 = conv(h, blk["conv1"], stride)
        r2 = conv(jax.nn.relu(r1), blk["conv2"], 1)
        responses += [r1, r2]
        sc = h[:, ::stride, ::stride, :]
        sc = jnp.pad(sc, ((0, 0), (0, 0), (0, 0), (0, width - sc.shape[-1])))
        ratios.append(jnp.linalg.norm(r2.ravel()) / jnp.linalg.norm(sc.ravel()))
        h = jax.nn.relu(r2 + sc if residual else r2)
    return np.array([np.std(np.asarray(r)) for r in responses]), np.array(ratios)


def direct_wrn10(v, x, residual):
    """WRN-10-2 (one wide block per group) by hand, BN with running statistics: (response stds, branch ratios)."""
    p, s = v["params"], v["batch_stats"]
    conv = lambda x, w, st, pad=1: jax.lax.conv_general_dilated(x, w, (st, st), [(pad, pad)] * 2, dimension_numbers=_NHWC)
    bn = lambda x, ps, ss: (x - ss["mean"]) / jnp.sqrt(ss["var"] + 1e-5) * ps["scale"] + ps["bias"]
    h = conv(x, p["stem_conv"]["kernel"], 1)  # no BN'd stem: the first block starts with BN-ReLU
    responses, ratios = [], []
    for i, (width, stride) in enumerate([(32, 1), (64, 2), (128, 2)], 1):
        bp, bs = p[f"stage{i}_block1"], s[f"stage{i}_block1"]
        a = jax.nn.relu(bn(h, bp["bn1"], bs["bn1"]))
        r1 = conv(a, bp["conv1"]["kernel"], stride)
        r2 = conv(jax.nn.relu(bn(r1, bp["bn2"], bs["bn2"])), bp["conv2"]["kernel"], 1)
        responses += [r1, r2]
        if residual:  # 1x1 projection of the pre-activated input: every group changes the shape
            sc = conv(a, bp["proj_conv"]["kernel"], stride, pad=0)
        else:  # the parameter-free reference: subsample + zero-pad
            sc = jnp.pad(h[:, ::stride, ::stride, :], ((0, 0), (0, 0), (0, 0), (0, width - h.shape[-1])))
        ratios.append(jnp.linalg.norm(r2.ravel()) / jnp.linalg.norm(sc.ravel()))
        h = r2 + sc if residual else r2
    return np.array([np.std(np.asarray(r)) for r in responses]), np.array(ratios)


@pytest.mark.parametrize("residual", [True, False])
def test_wrn_and_no_bn_nets_match_a_direct_computation(residual):
    x = images()
    for model, direct in [(models.create_model("cifar", depth=8, residual=residual, norm="none"), direct_no_bn_depth8),
                          (models.create_model("wrn", depth=10, widen_factor=2, residual=residual), direct_wrn10)]:
        v = randomized(model)  # random BN statistics and affine parameters, or conv biases without BN
        stds, ratios = direct(v, x, residual)
        np.testing.assert_allclose(jitted(D.layer_responses, model)(v, x), stds, rtol=2e-4)
        np.testing.assert_allclose(jitted(D.branch_ratios, model)(v, x), ratios, rtol=2e-4)
        m = jitted(D.response_moments, model)(v, x)
        np.testing.assert_allclose(np.sqrt(m["branch_mean_square"] / m["shortcut_mean_square"]), ratios, rtol=2e-4)
    names = D.layer_names(models.create_model("wrn", depth=10, widen_factor=2, residual=residual))
    assert names["response"] == [f"stage{i}_block1/conv{c}" for i in (1, 2, 3) for c in (1, 2)]
    assert names["grad"] == ["stem_conv"] + [f"stage{i}_block1/{c}" for i in (1, 2, 3)
                                             for c in ("conv1", "conv2") + (("proj_conv",) if residual else ())] + ["fc"]
    no_bn = D.layer_names(models.create_model("cifar", depth=8, residual=residual, norm="none"))
    assert no_bn == D.layer_names(models.create_model("cifar", depth=8, residual=residual))  # BN adds no layers


def test_gradient_norms_of_a_scanned_wrn_with_dropout():
    x, labels = images(), jnp.array([0, 3, 5, 9])
    model = models.create_model("wrn", depth=16, widen_factor=2, dropout_rate=0.3, scan=True)
    v = randomized(model)
    grad, weight = jitted(D.gradient_norms, model)(v["params"], v["batch_stats"], x, labels)

    def loss(p):  # the same fixed dropout mask as the diagnostics
        logits, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    g = jax.jit(jax.grad(loss))(v["params"])
    expected = [("stem_conv", ("stem_conv",), None)]
    for i in (1, 2, 3):
        expected += [(f"stage{i}_block1/{c}", (f"stage{i}_block1", c), None) for c in ("conv1", "conv2", "proj_conv")]
        expected += [(f"stage{i}_block2/{c}", (f"stage{i}_blocks", c), 0) for c in ("conv1", "conv2")]
    expected.append(("fc", ("fc",), None))
    assert D.layer_names(model)["grad"] == [n for n, _, _ in expected]
    pick = lambda tree, path, index: (lambda a: a if index is None else a[index])(
        functools.reduce(lambda t, k: t[k], path, tree)["kernel"])
    np.testing.assert_allclose(grad, [np.linalg.norm(pick(g, p, i)) for _, p, i in expected], rtol=1e-4)
    np.testing.assert_allclose(weight, [np.linalg.norm(pick(v["params"], p, i)) for _, p, i in expected], rtol=1e-5)
    assert D.layer_names(model)["block"] == [f"stage{i}_block{b}" for i in (1, 2, 3) for b in (1, 2)]


def test_diagnostics_of_a_net_without_batch_stats():
    from types import SimpleNamespace

    model = models.create_model("cifar", depth=8, residual=False, norm="none")
    v = model.init(jax.random.key(0), images(), train=False)
    assert set(v) == {"params"}
    batch = D.DiagnosticsBatch(images(8, seed=2), jnp.arange(8) % 10, images(8, seed=3))
    out = jax.jit(lambda p: D.diagnostics(SimpleNamespace(params=p, batch_stats={}), batch, model=model))(v["params"])
    rec = D.record(out, D.layer_names(model))
    assert len(rec["diagnostics/grad_norm"]) == 8 and len(rec["diagnostics/response_std"]) == 7
    assert len(rec["diagnostics/branch_ratio"]) == 3 and all(np.isfinite(rec["diagnostics/grad_norm"]))
    # zero-initialised residual branches without BN (the last conv of each branch) are the identity
    zero = models.create_model("cifar", depth=8, norm="none", zero_init_residual=True)
    vz = zero.init(jax.random.key(0), images(), train=False)
    np.testing.assert_array_equal(jitted(D.branch_ratios, zero)(vz, images()), 0.0)
    wrn = models.create_model("wrn", depth=10, widen_factor=2, zero_init_residual=True)
    np.testing.assert_array_equal(jitted(D.branch_ratios, wrn)(wrn.init(jax.random.key(0), images()), images()), 0.0)


class NumberedBlocks(models.CifarResNet):
    """The CIFAR net with its blocks named block1, block2, ... block15 across stages: names that sort
    wrongly as strings and carry no stage, so only a stated order can get the lists right."""

    def block_modules(self):
        modules = super().block_modules()
        return tuple(dataclasses.replace(m, name=f"block{k}", blocks=(f"block{k}",)) for k, m in enumerate(modules, 1))


def test_network_order_does_not_depend_on_module_names():
    x, labels = images(), jnp.array([0, 3, 5, 9])
    standard = models.create_model("cifar", depth=32, scan=False)
    numbered = NumberedBlocks(depth=32, scan=False)
    v = randomized(standard)
    renames = {m.name: f"block{k}" for k, m in enumerate(standard.block_modules(), 1)}
    vn = {col: {renames.get(k, k): c for k, c in tree.items()} for col, tree in v.items()}
    names = D.layer_names(numbered)
    assert names["block"] == [f"block{k}" for k in range(1, 16)]
    assert names["grad"][:4] == ["stem_conv", "block1/conv1", "block1/conv2", "block2/conv1"]
    assert names["grad"][-3:] == ["block15/conv1", "block15/conv2", "fc"]
    for fn in (D.layer_responses, D.branch_ratios):
        np.testing.assert_allclose(jitted(fn, numbered)(vn, x), jitted(fn, standard)(v, x), rtol=1e-5)
    grad_n = jitted(D.gradient_norms, numbered)(vn["params"], vn["batch_stats"], x, labels)
    grad_s = jitted(D.gradient_norms, standard)(v["params"], v["batch_stats"], x, labels)
    np.testing.assert_allclose(grad_n, grad_s, rtol=1e-4)
