"""Model tests: exact sizes from the paper, the identity-mapping property, BN, dtypes, scan.

Parameter and multiply-add counts use ``jax.eval_shape`` / ``jax.make_jaxpr``
only (nothing is materialised); forward passes run on small nets only.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import models
from resnet_jax.models import (
    MODEL_NAMES,
    BatchNorm,
    Block,
    abstract_variables,
    count_macs,
    count_params,
    create_model,
)


def n_params(name, **overrides):
    return count_params(abstract_variables(create_model(name, **overrides))["params"])


def init(model, shape=(2, 32, 32, 3), seed=0):
    # 'rbg' keys: threefry initialisers compile ~5x slower on XLA CPU
    return jax.jit(lambda x: model.init(jax.random.key(seed, impl="rbg"), x))(jnp.zeros(shape))


@pytest.fixture(scope="module")
def small_net():
    """A CIFAR net with one block per stage (depth 8) and its variables, shared by several tests."""
    m = create_model("cifar", depth=8)
    return m, init(m)


def images(shape=(4, 32, 32, 3), seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


# ---------------------------------------------------------------- sizes

CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_params(depth):
    assert n_params(f"resnet{depth}") == CIFAR_PARAMS[depth]
    # plain = option-A ResNet, whatever shortcut option is asked for
    assert n_params("cifar", depth=depth, residual=False, shortcut="C") == CIFAR_PARAMS[depth]
    if depth <= 110:
        assert n_params(f"plain{depth}") == CIFAR_PARAMS[depth]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_option_b_adds_2752(depth):
    assert n_params(f"resnet{depth}", shortcut="B") == CIFAR_PARAMS[depth] + 2_752


IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "plain18": 11_515_688,
    "plain34": 21_623_848,
}


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_params(name):
    assert n_params(name) == IMAGENET_PARAMS[name]


def test_imagenet_shortcut_options():
    assert n_params("resnet34", shortcut="C") == 22_716_840
    assert n_params("resnet34", shortcut="A") == IMAGENET_PARAMS["plain34"]
    assert n_params("resnet18", shortcut="A") == IMAGENET_PARAMS["plain18"]


def test_preact_params():
    # He et al. 2016b: 1.7M and 10.2M; these are the counts of the authors' layout
    assert n_params("preact_resnet110") == CIFAR_PARAMS[110]  # BN moved, not added
    assert n_params("preact_resnet164") == 1_703_258
    assert n_params("preact_resnet1001") == 10_327_706


CIFAR_MACS = {"resnet20": 40.6e6, "resnet56": 125.5e6, "resnet110": 252.9e6}
IMAGENET_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}


@pytest.mark.parametrize("name", sorted(CIFAR_MACS))
def test_cifar_macs(name):
    assert count_macs(create_model(name)) == pytest.approx(CIFAR_MACS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(IMAGENET_MACS))
def test_imagenet_macs(name):
    assert count_macs(create_model(name)) == pytest.approx(IMAGENET_MACS[name], rel=0.03)


def test_macs_exact_and_independent_of_scan():
    # resnet20 by hand: stem + 3 stages + FC
    stem = 32 * 32 * 27 * 16
    stage1 = 6 * 32 * 32 * 9 * 16 * 16
    stage23 = 2 * (16 * 16 * 9 * 16 * 32 + 5 * 16 * 16 * 9 * 32 * 32)
    assert count_macs(create_model("resnet20")) == stem + stage1 + stage23 + 64 * 10
    m = create_model("resnet110")
    assert count_macs(m.clone(scan=True)) == count_macs(m.clone(scan=False))
    v15 = count_macs(create_model("resnet50", stride_in_3x3=True))
    assert v15 == pytest.approx(4.1e9, rel=0.03)  # v1.5: the 3x3 convs run on the larger map


# ---------------------------------------------------------------- blocks


def make_block(**kw):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(BatchNorm, use_running_average=False)
    return Block(16, conv=conv, norm=norm, **kw)


def zero_branch(params, preact):
    """Zero the residual branch's last layer, so the branch outputs exactly zero."""
    params = jax.tree_util.tree_map(lambda a: a, flax.core.unfreeze(params))
    if preact:
        params["conv2"]["kernel"] = jnp.zeros_like(params["conv2"]["kernel"])
    else:
        params["bn2"]["scale"] = jnp.zeros_like(params["bn2"]["scale"])
        params["bn2"]["bias"] = jnp.zeros_like(params["bn2"]["bias"])
    return params


@pytest.mark.parametrize("preact", [False, True])
def test_identity_mapping(preact):
    x = images((2, 8, 8, 16))
    if not preact:  # a post-activation block's input is a ReLU output
        x = jax.nn.relu(x)
    res = make_block(residual=True, preact=preact)
    v = res.init(jax.random.key(0), x)
    y, _ = res.apply({**v, "params": zero_branch(v["params"], preact)}, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y, x)  # exactly the identity

    plain = make_block(residual=False, preact=preact)
    v = plain.init(jax.random.key(0), x)
    y, _ = plain.apply({**v, "params": zero_branch(v["params"], preact)}, x, mutable=["batch_stats"])
    assert not np.allclose(y, x)
    np.testing.assert_array_equal(y, 0.0)  # a zero branch is all a plain block has


@pytest.mark.parametrize("preact", [False, True])
def test_zero_init_residual(preact):
    x = jax.nn.relu(images((2, 8, 8, 16)))
    blk = make_block(residual=True, preact=preact, zero_init_residual=True)
    v = blk.init(jax.random.key(0), x)
    y, _ = blk.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y, x)
    # off by default (the paper did not use it)
    assert not create_model("resnet20").zero_init_residual


def test_option_a_shortcut_is_subsample_and_zero_pad():
    x = jax.nn.relu(images((2, 8, 8, 16)))
    blk = Block(32, conv=functools.partial(nn.Conv, use_bias=False),
                norm=functools.partial(BatchNorm, use_running_average=False), strides=2, shortcut="A")
    v = blk.init(jax.random.key(0), x)
    assert set(v["params"]) == {"conv1", "bn1", "conv2", "bn2"}  # parameter-free shortcut
    p = flax.core.unfreeze(v["params"])
    p["bn2"] = {"scale": jnp.zeros(32), "bias": jnp.zeros(32)}
    y, _ = blk.apply({**v, "params": p}, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 16:], 0.0)


def test_shortcut_b_and_c_projections():
    x = jax.nn.relu(images((2, 8, 8, 16)))
    for shortcut, strides, feats, has_proj in [("B", 1, 16, False), ("B", 2, 32, True), ("C", 1, 16, True)]:
        blk = Block(feats, conv=functools.partial(nn.Conv, use_bias=False),
                    norm=functools.partial(BatchNorm, use_running_average=False), strides=strides, shortcut=shortcut)
        names = set(jax.eval_shape(blk.init, jax.random.key(0), x)["params"])
        assert ({"proj_conv", "proj_bn"} <= names) == has_proj, (shortcut, strides)


# ---------------------------------------------------------------- nets


def test_output_shapes_cifar_and_dtype(small_net):
    m, v = small_net
    logits, state = m.apply(v, images(), train=True, mutable=["batch_stats", "intermediates"])
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    inter = state["intermediates"]
    assert inter["stage1_block1"]["output"][0].shape == (4, 32, 32, 16)
    assert inter["stage2_block1"]["output"][0].shape == (4, 16, 16, 32)
    assert inter["stage3_block1"]["output"][0].shape == (4, 8, 8, 64)
    assert set(v) == {"params", "batch_stats"}


@pytest.mark.parametrize("name,widths", [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))])
def test_output_shapes_imagenet(name, widths):
    m = create_model(name)
    v = abstract_variables(m)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    logits, state = jax.eval_shape(lambda v, x: m.apply(v, x, mutable=["intermediates"]), v, x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    for i, (w, hw) in enumerate(zip(widths, (56, 28, 14, 7)), 1):
        assert state["intermediates"][f"stage{i}_block1"]["output"][0].shape == (2, hw, hw, w)


def test_default_num_classes_and_overrides():
    assert create_model("resnet20").num_classes == 10
    assert create_model("plain152").num_classes == 1000
    m = create_model("resnet56", residual=False, shortcut="B", num_classes=100)
    assert (m.depth, m.residual, m.shortcut, m.num_classes) == (56, False, "B", 100)
    m = create_model("cifar", depth=74, residual=False, shortcut="A", preact=False, bottleneck=False,
                     dtype="bfloat16", bn_group_size=None)
    assert m.depth == 74 and m.dtype == jnp.bfloat16
    assert create_model("imagenet", depth=34).shortcut == "B"
    assert create_model("cifar", depth=20).shortcut == "A"
    assert len(MODEL_NAMES) == len(set(MODEL_NAMES))
    for name in ["resnet20", "resnet1202", "plain110", "resnet152", "plain152", "preact_resnet1001"]:
        assert name in MODEL_NAMES


def test_bn_train_vs_eval(small_net):
    m, v = small_net
    x = images() * 3 + 1
    y_train, new = m.apply(v, x, train=True, mutable=["batch_stats"])
    stats0, stats1 = v["batch_stats"]["stem_bn"], new["batch_stats"]["stem_bn"]
    np.testing.assert_array_equal(stats0["mean"], 0.0)
    np.testing.assert_array_equal(stats0["var"], 1.0)
    assert not np.allclose(stats1["mean"], 0.0) and not np.allclose(stats1["var"], 1.0)
    # eval mode reads the running averages and changes nothing
    y_eval = m.apply(v, x, train=False)
    assert not np.allclose(y_train, y_eval, atol=1e-3)
    y_eval2, same = m.apply(v, x, train=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(y_eval, y_eval2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same["batch_stats"], v["batch_stats"])
    # eval with the batch's own statistics as running averages == train mode
    bn = BatchNorm(momentum=0.0)
    h = images((6, 4, 4, 5)) * 2 + 3
    bv = bn.init(jax.random.key(0), h)
    yt, st = bn.apply(bv, h, mutable=["batch_stats"])
    ye = bn.clone(use_running_average=True).apply({**bv, **st}, h)
    np.testing.assert_allclose(yt, ye, atol=1e-5)


def test_bfloat16_keeps_float32_params_and_stats(small_net):
    m = create_model("cifar", depth=8, dtype="bfloat16")
    assert {a.dtype for a in jax.tree_util.tree_leaves(abstract_variables(m))} == {jnp.dtype(jnp.float32)}
    v = small_net[1]
    logits, state = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]))(
        v, images())
    assert logits.dtype == jnp.float32
    assert {a.dtype for a in jax.tree_util.tree_leaves(state["batch_stats"])} == {jnp.dtype(jnp.float32)}
    assert state["intermediates"]["stage1_block1"]["output"][0].dtype == jnp.bfloat16
    loss = lambda p: m.apply({**v, "params": p}, images(), train=True, mutable=["batch_stats"])[0].sum()
    grads = jax.jit(jax.grad(loss))(v["params"])
    assert {a.dtype for a in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------- group batch norm


def numpy_group_bn(x, group, eps=1e-5):
    x = np.asarray(x, np.float64)
    g = x.reshape((-1, group) + x.shape[1:])
    mean = g.mean(axis=(1, 2, 3), keepdims=True)
    var = g.var(axis=(1, 2, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape), mean.reshape(-1, x.shape[-1]), var.reshape(-1, x.shape[-1])


def test_group_bn_matches_numpy():
    x = images((8, 4, 4, 3)) * 2 + np.arange(8).reshape(8, 1, 1, 1)  # groups really differ
    bn = BatchNorm(group_size=4, momentum=0.9)
    v = bn.init(jax.random.key(0), x)
    y, st = bn.apply(v, x, mutable=["batch_stats"])
    ref, gmean, gvar = numpy_group_bn(x, 4)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    np.testing.assert_allclose(st["batch_stats"]["mean"], 0.1 * gmean.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["batch_stats"]["var"], 0.9 + 0.1 * gvar.mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        BatchNorm(group_size=3).apply(v, x, mutable=["batch_stats"])


@pytest.mark.parametrize("group", [None, 0, 8, 64])
def test_bn_without_groups_is_flax_batchnorm(group):
    x = images((8, 4, 4, 3)) * 2 + 1
    ours = BatchNorm(group_size=group)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    v = ours.init(jax.random.key(0), x)
    rv = ref.init(jax.random.key(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, rv)  # same names, shapes, init
    y, st = ours.apply(v, x, mutable=["batch_stats"])
    ry, rst = ref.apply(rv, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, ry, atol=1e-5)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5), st, rst)


def test_bn_global_batch_under_sharding():
    """Batch sharded over the 8 fake devices: statistics still cover the global batch."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x = images((16, 4, 4, 3)) * 2 + jnp.arange(16.0).reshape(16, 1, 1, 1)
    for group in (None, 8):
        bn = BatchNorm(group_size=group)
        v = bn.init(jax.random.key(0), x)
        f = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))
        y, st = f(v, x)
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ys, sts = f(jax.device_put(v, NamedSharding(mesh, P())), xs)
        np.testing.assert_allclose(ys, y, atol=1e-5)
        jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5), sts, st)
        ref, *_ = numpy_group_bn(x, group or 16)
        np.testing.assert_allclose(ys, ref, atol=1e-4)


def test_group_bn_in_model(small_net):
    m, v = small_net
    x = images()
    grouped = m.clone(bn_group_size=2)
    y_g, st_g = grouped.apply(v, x, train=True, mutable=["batch_stats"])
    # groups of 2 = the same net run on each half of the batch, running stats averaged
    halves = [m.apply(v, x[i : i + 2], train=True, mutable=["batch_stats"]) for i in (0, 2)]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
    close(y_g, jnp.concatenate([h[0] for h in halves]))
    jax.tree_util.tree_map(lambda g, a, b: close(g, (a + b) / 2), st_g, halves[0][1], halves[1][1])


# ---------------------------------------------------------------- scan vs unrolled


def stack_blocks(params, stages):
    """Unrolled params -> the scanned layout (blocks 2..n of stage i stacked as stage{i}_blocks)."""
    params = dict(flax.core.unfreeze(params))
    for i, n in enumerate(stages, 1):
        rest = [params.pop(f"stage{i}_block{b}") for b in range(2, n + 1)]
        params[f"stage{i}_blocks"] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *rest)
    return params


@pytest.mark.parametrize("preact", [False, True])
def test_scan_equals_unrolled(preact):
    """Same outputs, BN statistics and gradients; the unrolled reference also uses
    plain lax convs, so this checks the canonical-gradient conv in the scanned net too."""
    unrolled = create_model("cifar", depth=14, preact=preact, scan=False, canonical_conv_grad=False)
    scanned = unrolled.clone(scan=True, canonical_conv_grad=True)
    assert not unrolled.use_scan and scanned.use_scan
    v = init(unrolled)
    vs = {k: stack_blocks(c, unrolled.stages()) for k, c in v.items()}
    jax.tree_util.tree_map(  # same structure as the scanned net's own init
        lambda a, b: None, vs, jax.eval_shape(scanned.init, jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    )
    x, labels = images(), jnp.arange(4)

    def loss(model, p, bs):
        logits, new = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                  mutable=["batch_stats", "intermediates"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean(), (logits, new)

    (l_u, (y_u, st_u)), g_u = jax.jit(jax.value_and_grad(functools.partial(loss, unrolled), has_aux=True))(
        v["params"], v["batch_stats"])
    (l_s, (y_s, st_s)), g_s = jax.jit(jax.value_and_grad(functools.partial(loss, scanned), has_aux=True))(
        vs["params"], vs["batch_stats"])
    close = functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=2e-5)
    close(y_s, y_u)
    jax.tree_util.tree_map(close, st_s["batch_stats"], stack_blocks(st_u["batch_stats"], unrolled.stages()))
    jax.tree_util.tree_map(close, g_s, stack_blocks(g_u, unrolled.stages()))
    # per-block outputs of the scanned blocks are still there, stacked (blocks, batch, H, W, C)
    inter_s, inter_u = st_s["intermediates"], st_u["intermediates"]
    assert inter_s["stage2_blocks"]["output"][0].shape == (1, 4, 16, 16, 32)
    assert len(inter_s["stage2_blocks"]["response"]) == 2  # both 3x3 layers
    close(inter_s["stage2_blocks"]["output"][0][0], inter_u["stage2_block2"]["output"][0])


def test_scan_auto_by_depth():
    assert not create_model("resnet56").use_scan  # 27 blocks
    assert create_model("resnet110").use_scan  # 54 blocks: scanned is faster (CPU) and compiles faster
    assert create_model("resnet1202").use_scan and create_model("preact_resnet1001").use_scan
    assert not create_model("resnet50").use_scan and create_model("resnet152").use_scan
    assert create_model("resnet20", scan=True).use_scan and not create_model("resnet1202", scan=False).use_scan


# ---------------------------------------------------------------- conv with canonical gradients


@pytest.mark.parametrize("k,pad", [(3, (1, 1)), (1, (0, 0)), (3, (0, 2))])
def test_canonical_conv_gradients_match_lax(k, pad):
    x = images((2, 6, 6, 3))
    w = jax.random.normal(jax.random.key(2), (k, k, 3, 5))
    args = ((1, 1), [pad, pad])
    kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(lambda x, w: models.canonical_conv_general_dilated(x, w, *args, **kw), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: jax.lax.conv_general_dilated(x, w, *args, **kw), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = images(y.shape, seed=3)
    for a, b in zip(vjp(dy), vjp_ref(dy)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- errors


def test_errors_list_what_is_valid():
    with pytest.raises(ValueError, match="resnet1202"):
        create_model("resnet21")
    with pytest.raises(ValueError, match=r"6n\+2"):
        create_model("cifar", depth=21)
    with pytest.raises(ValueError, match=r"9n\+2"):
        create_model("cifar", depth=30, bottleneck=True)
    with pytest.raises(ValueError, match="50"):
        create_model("imagenet", depth=20)
    with pytest.raises(ValueError, match="residual"):
        create_model("resnet20", residul=False)
    with pytest.raises(ValueError, match="'A', 'B', 'C'"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="depth"):
        create_model("cifar")
    with pytest.raises(ValueError, match="dtype"):
        create_model("resnet20", dtype="float13")


def test_table_describes_every_model():
    d = models.describe("resnet56")
    assert (d["layers"], d["params"], d["blocks"]) == (56, 853_018, 27)
    assert d["macs"] == pytest.approx(125.5e6, rel=0.01)
