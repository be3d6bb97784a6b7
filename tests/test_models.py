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


# ---------------------------------------------------------------- Wide ResNets


def reference_wrn_params(depth, k, num_classes=10, residual=True):
    """Parameters of WRN-depth-k as the reference PyTorch code builds it (xternalz/WideResNet-pytorch
    wideresnet.py; szagoruyko/wide-residual-networks pytorch/resnet.py has the same tensors): conv0
    3x3x3x16; per block bn0 (2 ni) + conv0 (9 ni no) + bn1 (2 no) + conv1 (9 no no) + convShortcut
    1x1 (ni no, where ni != no); final bn (2 x 64k); fc (64k x classes + classes). No conv biases."""
    n, channels = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    total = 3 * 3 * 3 * 16 + 2 * channels[3] + channels[3] * num_classes + num_classes
    for g in range(3):
        for i in range(n):
            ni, no = channels[g] if i == 0 else channels[g + 1], channels[g + 1]
            total += 2 * ni + 9 * ni * no + 2 * no + 9 * no * no + (ni * no if ni != no and residual else 0)
    return total


# WRN paper (Zagoruyko & Komodakis 2016) Table 4: WRN-40-4 8.9M, WRN-16-8 11.0M, WRN-28-10 36.5M;
# the exact counts are those of the reference PyTorch implementation above (CIFAR-10, 10 classes).
WRN_PARAMS = {(28, 10): 36_479_194, (16, 8): 10_961_370, (40, 4): 8_949_210,
              (16, 1): 175_066, (16, 2): 691_674, (16, 4): 2_748_890}


@pytest.mark.parametrize("depth,k", sorted(WRN_PARAMS))
def test_wrn_params_match_the_reference_implementation(depth, k):
    assert reference_wrn_params(depth, k) == WRN_PARAMS[depth, k]
    assert n_params("wrn", depth=depth, widen_factor=k) == WRN_PARAMS[depth, k]
    # the plain twin: no shortcut at all, so no projection convs either
    assert n_params("wrn", depth=depth, widen_factor=k, residual=False) == reference_wrn_params(depth, k, residual=False)


def test_wrn_registry_names_and_cifar100():
    assert n_params("wrn28_10") == 36_479_194 and n_params("wrn16_8") == 10_961_370 and n_params("wrn40_4") == 8_949_210
    assert n_params("plain_wrn16_8") == 10_961_370 - (16 * 128 + 128 * 256 + 256 * 512)
    assert n_params("wrn28_10", num_classes=100) == reference_wrn_params(28, 10, 100) == 36_536_884
    for name in ["wrn16_8", "wrn28_10", "wrn40_4", "plain_wrn16_8"]:
        assert name in MODEL_NAMES


def test_wrn_macs_by_hand():
    def macs(depth, k):
        n, ch = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
        total = 32 * 32 * 27 * 16 + ch[3] * 10
        for g, s in enumerate((32, 16, 8)):
            ni, no = ch[g], ch[g + 1]
            total += s * s * (9 * ni * no + 9 * no * no + (ni * no if ni != no else 0) + (n - 1) * 18 * no * no)
        return total
    assert count_macs(create_model("wrn28_10")) == macs(28, 10) == 5_243_328_768  # 5.2G
    assert count_macs(create_model("wrn16_8")) == macs(16, 8)


@pytest.mark.parametrize("k", [1, 2])
def test_wrn_layout(k):
    m = create_model("wrn", depth=10, widen_factor=k)
    p = abstract_variables(m)["params"]
    assert set(p) == {"stem_conv", "stage1_block1", "stage2_block1", "stage3_block1", "final_bn", "fc"}
    assert p["stem_conv"]["kernel"].shape == (3, 3, 3, 16)  # the stem stays 16 wide
    # projection (1x1 conv, no BN) exactly where the shape changes: 16 -> 16k, and the strided groups
    assert ("proj_conv" in p["stage1_block1"]) == (k > 1)
    assert {"proj_conv", "bn1", "bn2", "conv1", "conv2"} == set(p["stage2_block1"]) == set(p["stage3_block1"])
    assert p["stage3_block1"]["proj_conv"]["kernel"].shape == (1, 1, 32 * k, 64 * k)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    _, state = jax.eval_shape(lambda v, x: m.apply(v, x, mutable=["intermediates"]), abstract_variables(m), x)
    for i, (w, hw) in enumerate(zip((16 * k, 32 * k, 64 * k), (32, 16, 8)), 1):
        assert state["intermediates"][f"stage{i}_block1"]["output"][0].shape == (2, hw, hw, w)
    assert (m.block_name, m.shortcut, m.depth) == ("wide", "B", 10)
    assert m.stages() == (1, 1, 1) and create_model("wrn28_10").stages() == (4, 4, 4)


def test_wrn_dropout_train_needs_the_rng_eval_does_not():
    m = create_model("wrn", depth=10, widen_factor=2, dropout_rate=0.3)
    v = init(m)
    x = images()
    y_eval = m.apply(v, x)  # eval: deterministic, no rng
    np.testing.assert_array_equal(y_eval, m.apply(v, x, train=False))
    train = lambda seed: m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)})[0]
    np.testing.assert_array_equal(train(1), train(1))  # a function of the key: (seed, step) -> exact resume
    assert not np.allclose(train(1), train(2))
    with pytest.raises(flax.errors.InvalidRngError):
        m.apply(v, x, train=True, mutable=["batch_stats"])
    # without dropout the training step needs no rng
    m.clone(dropout_rate=0.0).apply(v, x, train=True, mutable=["batch_stats"])
    # a scanned WRN draws the masks inside the scan (one dropout stream split over the blocks)
    scanned = create_model("wrn", depth=16, dropout_rate=0.3, scan=True)
    vs = init(scanned)
    y, _ = scanned.apply(vs, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    assert np.isfinite(y).all()


def test_wide_block_drops_out_between_the_convs():
    blk = models.WideBlock(16, conv=functools.partial(nn.Conv, use_bias=False),
                           norm=functools.partial(BatchNorm, use_running_average=True), dropout_rate=0.5)
    x = images((2, 8, 8, 16))
    v = blk.init(jax.random.key(0), x)
    run = lambda deterministic: blk.clone(deterministic=deterministic).apply(
        v, x, mutable=["intermediates"], rngs={"dropout": jax.random.key(3)})[1]["intermediates"]["response"]
    (r1, r2), (d1, d2) = run(True), run(False)
    np.testing.assert_array_equal(r1, d1)  # conv1 comes before the dropout
    assert not np.allclose(r2, d2)  # conv2 sees the dropped-out activations


# ---------------------------------------------------------------- blocks by name


def test_block_registry_and_the_flags_of_earlier_configs():
    assert set(models.BLOCKS) == {"basic", "bottleneck", "preact", "preact_bottleneck", "wide"}
    for (preact, bottleneck), name in {(False, False): "basic", (False, True): "bottleneck",
                                        (True, False): "preact", (True, True): "preact_bottleneck"}.items():
        assert models.block_name(preact, bottleneck) == name
        assert type(make_block(preact=preact, bottleneck=bottleneck)) is models.BLOCKS[name]
        legacy = create_model("cifar", depth=11 if bottleneck else 8, preact=preact, bottleneck=bottleneck)
        named = create_model("cifar", depth=11 if bottleneck else 8, block=name)
        assert legacy.block_name == named.block_name == name
        assert jax.tree.map(jnp.shape, abstract_variables(legacy)) == jax.tree.map(jnp.shape, abstract_variables(named))
    assert create_model("cifar", depth=8, block="wide", preact=True).block_name == "wide"  # consistent flag: fine
    assert create_model("resnet50").block_name == "bottleneck" and create_model("resnet34").block_name == "basic"
    assert create_model("resnet34", block="bottleneck").bottleneck


def test_block_errors_say_what_is_valid():
    with pytest.raises(ValueError, match="valid blocks: basic, bottleneck, preact"):
        create_model("resnet20", block="resnext")
    with pytest.raises(ValueError, match="contradicts preact=True"):
        create_model("cifar", depth=20, block="basic", preact=True)
    with pytest.raises(ValueError, match="post-activation"):
        create_model("resnet50", block="preact_bottleneck")
    with pytest.raises(ValueError, match="block='wide'"):
        create_model("resnet20", dropout_rate=0.1)
    with pytest.raises(ValueError, match=r"6n\+4"):
        create_model("wrn", depth=20)
    with pytest.raises(ValueError, match="two-conv blocks"):
        create_model("wrn", depth=16, block="preact_bottleneck")
    with pytest.raises(ValueError, match="'batch', 'group', 'none'"):
        create_model("resnet20", norm="layer")
    with pytest.raises(ValueError, match="widen_factor"):
        create_model("wrn", depth=16, widen_factor=0)


def test_a_new_block_type_is_one_class(monkeypatch):
    """One class (an ordering + its convs) and one registry entry: the nets, counting and the network
    order work with it unchanged."""

    class Basic5x5(models.PostActivationBlock):
        def layers(self):
            return models.ConvLayer(self.features, 5, self.strides), models.ConvLayer(self.features, 5, 1)

    monkeypatch.setitem(models.BLOCKS, "basic5x5", Basic5x5)
    m = create_model("cifar", depth=20, block="basic5x5")
    block_kernels = CIFAR_PARAMS[20] - 432 - 2 * 688 - 650  # resnet20 minus stem, BN and fc: the 3x3 kernels
    assert n_params("cifar", depth=20, block="basic5x5") == CIFAR_PARAMS[20] + block_kernels * (25 - 9) // 9
    kernels = [e.name for e in models.network_order(m).kernels]
    assert kernels[:3] == ["stem_conv", "stage1_block1/conv1", "stage1_block1/conv2"] and len(kernels) == 20
    assert abstract_variables(m)["params"]["stage2_block2"]["conv1"]["kernel"].shape == (5, 5, 32, 32)


# ---------------------------------------------------------------- normalisation as a choice


def test_norm_none_has_conv_biases_and_no_batch_stats():
    m = create_model("resnet20", norm="none")
    v = abstract_variables(m)
    assert set(v) == {"params"}  # no batch_stats collection
    p = v["params"]
    assert "stem_bn" not in p and set(p["stage2_block1"]) == {"conv1", "conv2"}
    assert p["stage2_block1"]["conv1"]["bias"].shape == (32,)
    # BN's scale and bias (2 per channel) replaced by one conv bias per channel: 688 conv channels
    assert n_params("resnet20", norm="none") == CIFAR_PARAMS[20] - 688
    # option B: the two projections keep their kernels (2,560) and get biases (96) instead of BN (192)
    assert n_params("resnet20", norm="none", shortcut="B") == CIFAR_PARAMS[20] - 688 + 2_560 + 96
    small = create_model("cifar", depth=8, norm="none")
    v = init(small)
    flat = flax.traverse_util.flatten_dict(v["params"])
    assert all(np.all(a == 0) for k, a in flat.items() if k[-1] == "bias" and k[0] != "fc")  # where BN's bias was
    y, state = small.apply(v, images(), train=True, mutable=["batch_stats"])
    assert np.isfinite(y).all() and state == {}
    np.testing.assert_array_equal(y, small.apply(v, images()))  # nothing differs between train and eval
    assert set(init(create_model("wrn", depth=10, norm="none"))) == {"params"}
    assert set(abstract_variables(create_model("resnet18", norm="none"))) == {"params"}


def layer_mean_squares(model, variables, x):
    """Mean square of every conv layer's response (stem, then block by block) at this init."""
    _, state = model.apply(variables, x, mutable=["intermediates"])
    inter = state["intermediates"]
    out = [jnp.mean(inter["stem_response"][0] ** 2)]
    for b in models.network_order(model).blocks:
        out += [jnp.mean((r if b.index is None else r[b.index]) ** 2) for r in inter[b.path[0]]["response"]]
    return np.asarray(out, np.float64)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
@pytest.mark.parametrize("depth", [20, 56])
def test_norm_none_init_keeps_the_scale_across_depth(depth):
    """He init without BN: each layer keeps the mean square of its input in expectation (gain 1 within
    a stage, 1/2 where the width doubles: fan_out = 2 fan_in), so the scale does not drift with depth
    by construction. What remains is the finite-width fluctuation of a product of random layers
    (Hanin & Rolnick 2018: the log of the scale is a random walk whose variance grows like
    depth / width, here 16-64 channels), visible in plain-56 as a seed-dependent decay."""
    m = create_model(f"plain{depth}", norm="none")
    x = images((8, 32, 32, 3))
    within, doubling = [], []
    for seed in range(4):
        v = init(m, x.shape, seed)
        logits = m.apply(v, x)
        assert np.isfinite(logits).all() and np.abs(logits).max() > 1e-6
        ms = layer_mean_squares(m, v, x)
        gains = ms[1:] / ms[:-1]  # layer l's response over layer l-1's (through the ReLU)
        per_stage = (len(ms) - 1) // 3
        first_of_stage = {1 + per_stage, 1 + 2 * per_stage}  # stage2_block1/conv1, stage3_block1/conv1
        for i, g in enumerate(gains, 1):
            (doubling if i in first_of_stage else within).append(g)
        std_ratio = np.sqrt(ms / ms[0])
        if depth == 20:
            assert 0.1 < std_ratio.min() and std_ratio.max() < 2.5, std_ratio  # roughly constant end to end
        else:
            assert 1e-3 < std_ratio.min() and std_ratio.max() < 2.5, std_ratio  # neither explodes nor dies
    assert 0.85 < np.mean(within) < 1.15, np.mean(within)
    assert 0.35 < np.mean(doubling) < 0.7, np.mean(doubling)


def test_norm_none_residual_scale_and_zero_init():
    """A residual net without BN adds a branch as large as its input in every block: the variance
    doubles per block at init (2^27 for ResNet-56), unless zero_init_residual zeroes each branch's
    last conv, which makes every block the identity (SkipInit / Fixup style)."""
    x = images((8, 32, 32, 3))
    m = create_model("resnet56", norm="none")
    ms = layer_mean_squares(m, init(m, x.shape), x)
    assert ms[-1] / ms[0] > 1e4
    z = m.clone(zero_init_residual=True)
    vz = init(z, x.shape)
    np.testing.assert_array_equal(layer_mean_squares(z, vz, x)[2::2], 0.0)  # each branch's last conv: zero
    assert np.isfinite(z.apply(vz, x)).all()


def test_group_norm():
    x = images((4, 6, 6, 64)) * 2 + 1
    ours = models.GroupNorm()
    v = ours.init(jax.random.key(0), x)
    ref = nn.GroupNorm(num_groups=32, epsilon=1e-5)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(ref.init(jax.random.key(0), x), x), atol=1e-5)
    x16 = images((4, 6, 6, 16))  # narrower than 32 groups: one channel per group
    ref16 = nn.GroupNorm(num_groups=16, epsilon=1e-5)
    np.testing.assert_allclose(ours.apply(ours.init(jax.random.key(0), x16), x16),
                               ref16.apply(ref16.init(jax.random.key(0), x16), x16), atol=1e-5)
    m = create_model("cifar", depth=8, norm="group")
    assert n_params("resnet20", norm="group") == CIFAR_PARAMS[20]  # same scale/bias as BN
    v = init(m)
    assert set(v) == {"params"}
    y, _ = m.apply(v, images(), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, m.apply(v, images()), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- from_config, network order, the table


def test_from_config_builds_the_net_of_a_run():
    from ml_collections import config_dict

    from resnet_jax.config_args import load_config_module

    configs = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
    # a config.json written before blocks had names
    saved = {"family": "cifar", "depth": 164, "residual": True, "shortcut": "B", "preact": True, "bottleneck": True,
             "zero_init_residual": False, "dtype": "float32", "bn_group_size": 0, "scan": None}
    m = models.from_config(saved, 10)
    assert m == create_model("preact_resnet164") and m.bn_group_size is None and m.block_name == "preact_bottleneck"
    assert models.from_config({**saved, "bn_group_size": 64}, 100).bn_group_size == 64
    cifar10 = load_config_module(configs / "cifar10.py")
    m = models.from_config(cifar10.get_config("depth=56,residual=false").model, 10)
    assert m == create_model("plain56")
    m = models.from_config(cifar10.get_config("depth=16,width=8").model, 10)
    assert isinstance(m, models.WideResNet) and m == create_model("wrn16_8")
    assert models.from_config(cifar10.get_config("depth=20,norm=none").model, 10).norm == "none"
    imagenet = load_config_module(configs / "imagenet.py").get_config("depth=50")
    m = models.from_config(imagenet.model, 1000)
    assert isinstance(m, models.ImageNetResNet) and m.block_name == "bottleneck"
    assert models.from_config(config_dict.ConfigDict(saved), 10) == create_model("preact_resnet164")


def test_network_order_of_a_scanned_net():
    m = create_model("preact_resnet164")  # scanned, bottleneck, projection shortcuts
    order = models.network_order(m)
    assert len(order.blocks) == 54 and order.blocks[1] == models.Located("stage1_block2", ("stage1_blocks",), 0)
    names = [k.name for k in order.kernels]
    assert names[:6] == ["stem_conv", "stage1_block1/conv1", "stage1_block1/conv2", "stage1_block1/conv3",
                         "stage1_block1/proj_conv", "stage1_block2/conv1"]
    assert names[-1] == "fc" and len(names) == 1 + 54 * 3 + 3 + 1
    assert order.kernels[5] == models.Located("stage1_block2/conv1", ("stage1_blocks", "conv1"), 0)


def test_describe_wrn():
    d = models.describe("wrn28_10")
    assert (d["family"], d["block"], d["layers"], d["blocks"], d["shortcut"], d["params"]) == (
        "wrn", "wide", 28, 12, "B", 36_479_194)


def test_width_sweep_config_names_and_nets():
    from resnet_jax.config_args import load_config_module

    configs = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
    width = load_config_module(configs / "cifar10_width.py")
    runs = width.get_sweep()
    assert len(runs) == 18 and {"plain-110", "resnet-110", "plain-wrn-16-1", "wrn-16-8"} <= set(runs)
    for run in runs:
        c = width.get_config(f"run={run}")
        assert c.name == run and c.wandb.group == "cifar10-width"
    m = models.from_config(width.get_config("run=plain-wrn-16-4").model, 10)
    assert isinstance(m, models.WideResNet) and (m.depth, m.widen_factor, m.residual) == (16, 4, False)
    with pytest.raises(ValueError, match="wrn-16-8"):
        width.get_config("run=wrn-16-16")
    cifar10 = load_config_module(configs / "cifar10.py")
    assert [cifar10.get_config(a).name for a in ("depth=56,residual=false", "depth=110", "depth=164,preact=true",
                                                 "depth=28,width=10,dropout=0.3", "depth=56,residual=false,norm=none")] \
        == ["plain-56", "resnet-110", "preact-resnet-164", "wrn-28-10-dropout0.3", "plain-56-nobn"]
