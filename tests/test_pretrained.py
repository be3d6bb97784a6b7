"""torchvision-layout weights in and out (resnet_jax.pretrained), checked against torchvision itself.

The torchvision checks skip when torch / torchvision are absent (CI installs the CPU build of torch:
see .ci/run). The rest runs on numpy-made state dicts. Small images (64x64), batch 2.
"""
import json
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from resnet_jax import checkpointing, models, pretrained
from resnet_jax.data import tfds_stream

IMAGE = 64
TV_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


# ----------------------------------------------------------------------------- helpers


def synthetic_state_dict(depth, num_classes=1000, seed=0):
    """A torchvision-layout state dict of random numpy arrays (positive running variances)."""
    rng = np.random.default_rng(seed)
    state = {}
    for slot in pretrained.torchvision_layout(depth, num_classes):
        value = rng.standard_normal(slot.torch_shape).astype(np.float32)
        state[slot.torch_key] = np.abs(value) + 0.5 if slot.torch_key.endswith("running_var") else value
    return state


def save(tmp_path, state, name="w.safetensors", metadata=None):
    path = tmp_path / name
    safetensors.numpy.save_file(state, str(path), metadata=metadata)
    return path


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def assert_trees_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def error_of(call, *args, **kwargs):
    with pytest.raises(ValueError) as e:
        call(*args, **kwargs)
    assert "\n" not in str(e.value), "errors are one line"
    return str(e.value)


def import_torchvision():
    """(torch, torchvision), or skip.

    PyPI's torchvision beside the CPU build of torch cannot load its compiled ops, and its
    import then fails registering fake kernels for them ('operator torchvision::nms does not
    exist'). Its model code is pure Python: on that failure the two registration modules are
    stubbed and the import retried (a matching torch/torchvision pair imports normally).
    """
    torch = pytest.importorskip("torch", reason="torch not installed: pip install 'resnet_jax[torch]'")
    try:
        import torchvision
    except (RuntimeError, ImportError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        try:
            import torchvision
        except Exception as e:  # noqa: BLE001 - any failure here means: no usable torchvision
            pytest.skip(f"torchvision's model code does not import beside torch {torch.__version__}: {e}")
    return torch, torchvision


@pytest.fixture(scope="module")
def tv():
    return import_torchvision()


_NETS = {}


def torchvision_net(tv, depth, num_classes=1000):
    """A random torchvision ResNet in eval mode with non-trivial BN: running statistics from a random
    batch, then perturbed, and random affine parameters (so every BN tensor's mapping matters)."""
    key = (depth, num_classes)
    if key in _NETS:
        return _NETS[key]
    torch, torchvision = tv
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0  # running statistics := this batch's, keeping activations O(1)
    with torch.no_grad():
        net.train()(torch.randn(4, 3, IMAGE, IMAGE))
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.5, 2.0))
            bn.running_mean.add_(0.2 * torch.randn_like(bn.running_mean) * bn.running_var.sqrt())
    _NETS[key] = net.eval()
    return _NETS[key]


def images(seed=0):
    return np.random.default_rng(seed).standard_normal((2, IMAGE, IMAGE, 3)).astype(np.float32)  # NHWC


def torch_logits(tv, net, x):
    torch, _ = tv
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


_APPLY = {}


def our_logits(info, params, batch_stats, x, **overrides):
    key = tuple(sorted({**info.model_kwargs, **overrides}.items()))
    if key not in _APPLY:
        model = info.create_model(**overrides)
        _APPLY[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.asarray(_APPLY[key]({"params": params, "batch_stats": batch_stats}, x))


def max_logit_error(ours, theirs):
    """Max abs difference, relative to the logits' scale (float32 through 18-152 layers)."""
    return float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))


# ----------------------------------------------------------------------------- the layout (no torch)


@pytest.mark.parametrize("depth,scan", [(18, None), (34, None), (50, None), (101, None), (101, False), (152, None)])
def test_layout_gives_our_models_trees(depth, scan):
    """Every torchvision tensor lands on a leaf of our model, with its shape, in the scanned layout too."""
    params, batch_stats, info = pretrained.from_torchvision(synthetic_state_dict(depth), scan=scan)
    expected = models.abstract_variables(info.create_model(), (1, IMAGE, IMAGE, 3))
    for got, want in ((params, expected["params"]), (batch_stats, expected["batch_stats"])):
        assert {k: v.shape for k, v in flat(got).items()} == {k: v.shape for k, v in flat(want).items()}
    assert info.num_params == TV_PARAMS[depth] == models.count_params(expected["params"])
    assert info.model_name == f"resnet{depth}" and info.num_classes == 1000 and info.shortcut == "B"
    assert info.scan == (depth > 50 if scan is None else scan) and info.stride_in_3x3


def test_scanned_blocks_are_the_unrolled_ones_stacked():
    state = synthetic_state_dict(101)
    scanned, scanned_bs, _ = pretrained.from_torchvision(state, scan=True)
    unrolled, unrolled_bs, _ = pretrained.from_torchvision(state, scan=False)
    assert scanned["stage3_blocks"]["conv2"]["kernel"].shape == (22, 3, 3, 256, 256)
    np.testing.assert_array_equal(scanned["stage3_blocks"]["bn2"]["scale"][4], state["layer3.5.bn2.weight"])
    np.testing.assert_array_equal(scanned_bs["stage3_blocks"]["bn2"]["var"][4], state["layer3.5.bn2.running_var"])
    assert_trees_equal(pretrained.unstack_scanned_blocks(scanned), unrolled)
    assert_trees_equal(pretrained.unstack_scanned_blocks(scanned_bs), unrolled_bs)


def test_depth_is_read_off_the_keys():
    for depth in pretrained.TORCHVISION_DEPTHS:
        assert pretrained.detect_depth(synthetic_state_dict(depth, num_classes=3)) == depth
    state = {k: v for k, v in synthetic_state_dict(18).items() if not k.startswith("layer4.1.")}
    assert "match no torchvision ResNet" in error_of(pretrained.from_torchvision, state)


# ----------------------------------------------------------------------------- errors name what is wrong


def test_another_depth_is_refused_by_name(tmp_path):
    path = save(tmp_path, synthetic_state_dict(34))
    message = error_of(pretrained.load, path, depth=50)
    assert message.startswith(f"{path}: resnet50 weights (its keys are those of resnet34: load it as that): missing ")
    assert "layer1.0.conv3.weight" in message and "layer1.0.conv1.weight has shape (64,64,3,3), expected (64,64,1,1)" \
        in message
    message = error_of(pretrained.load, save(tmp_path, synthetic_state_dict(18), "r18.safetensors"), depth=34)
    assert "missing layer1.2.conv1.weight" in message


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path):
    state = synthetic_state_dict(50)
    del state["layer3.5.bn2.running_var"]
    state["layer1.0.extra.weight"] = np.zeros(3, np.float32)
    state["layer2.1.conv2.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    message = error_of(pretrained.load, save(tmp_path, state))
    assert message == (f"{tmp_path / 'w.safetensors'}: resnet50 weights: missing layer3.5.bn2.running_var; "
                       "unexpected layer1.0.extra.weight; "
                       "layer2.1.conv2.weight has shape (128,128,1,1), expected (128,128,3,3)")


def test_bad_files_are_named(tmp_path, monkeypatch):
    good = save(tmp_path, synthetic_state_dict(18))
    data = good.read_bytes()
    for name, content in [("cut.safetensors", data[: len(data) // 2]), ("header.safetensors", data[:40]),
                          ("short.safetensors", data[:5])]:
        (tmp_path / name).write_bytes(content)
        message = error_of(pretrained.load, tmp_path / name)
        assert message.startswith(f"{tmp_path / name}: ") and "truncated" in message
    (tmp_path / "notes.txt").write_text("not weights\n")
    assert "neither a .safetensors nor a torch .pth file" in error_of(pretrained.load, tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="absent.pth: no such file"):
        pretrained.load(tmp_path / "absent.pth")
    (tmp_path / "w.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    needs_torch = r"w.pth: reading a torch .pth file needs torch: pip install 'resnet_jax\[torch\]'"
    with pytest.raises(ImportError, match=needs_torch):
        pretrained.load(tmp_path / "w.pth")


def test_file_kind_is_read_off_the_content(tmp_path, monkeypatch):
    """A .safetensors header length whose low byte is 0x80 (as a pickle starts) is still a .safetensors file."""
    state = synthetic_state_dict(18)
    for pad in range(0, 256, 8):
        path = save(tmp_path, state, "odd.bin", metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    monkeypatch.setitem(sys.modules, "torch", None)  # a torch reader would fail
    assert pretrained.load(path)[2].metadata["pad"]


def test_nets_without_a_torchvision_layout_are_refused():
    def zeros(name, **kw):
        v = models.abstract_variables(models.create_model(name, **kw), (1, IMAGE, IMAGE, 3))
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), (v["params"], v["batch_stats"]))

    message = error_of(pretrained.to_torchvision, *zeros("resnet34", shortcut="A"))
    assert message.startswith("resnet34 variables do not fit torchvision's layout (residual, shortcut option B): "
                              "missing torchvision's layer2.0.downsample.0.weight")
    assert "unexpected params/stage1_block1/proj_bn/bias" in error_of(pretrained.to_torchvision,
                                                                   *zeros("resnet18", shortcut="C"))
    assert "no torchvision ResNet" in error_of(pretrained.to_torchvision, *zeros("resnet20"))


# ----------------------------------------------------------------------------- export (no torch)


@pytest.mark.parametrize("depth", [50, 101])
def test_export_round_trip_is_exact(tmp_path, depth):
    state = synthetic_state_dict(depth, num_classes=7, seed=depth)
    params, batch_stats, info = pretrained.from_torchvision(state)
    path = tmp_path / "out.safetensors"
    written = pretrained.export_safetensors(params, batch_stats, path)
    assert written.depth == depth and written.num_classes == 7 and written.scan == info.scan
    exported, metadata = pretrained.read_state_dict(path)
    slots = pretrained.torchvision_layout(depth, 7)
    assert sorted(exported) == sorted([s.torch_key for s in slots] + pretrained.bn_keys(slots))
    assert metadata["arch"] == f"resnet{depth}" and metadata["format"] == "pt"
    for key, value in state.items():
        assert exported[key].dtype == np.float32
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    params2, batch_stats2, info2 = pretrained.load(path)
    assert_trees_equal(params2, params)
    assert_trees_equal(batch_stats2, batch_stats)
    assert info2.stride_source == pretrained.DEFAULT_STRIDE_SOURCE and info2.normalization == "torchvision"


def test_v1_is_kept_in_the_metadata(tmp_path):
    params, batch_stats, _ = pretrained.from_torchvision(synthetic_state_dict(50), stride_in_3x3=False)
    path = tmp_path / "v1.safetensors"
    pretrained.export_safetensors(params, batch_stats, path, stride_in_3x3=False)
    info = pretrained.load(path)[2]
    assert not info.stride_in_3x3 and info.stride_source == "file metadata"
    assert not info.create_model().stride_in_3x3
    assert pretrained.load(path, stride_in_3x3=True)[2].stride_in_3x3


# ----------------------------------------------------------------------------- the CLI


def fake_run(workdir, depth=18, step=7, **model_fields):
    """A run folder as training leaves it: config.json and an Orbax checkpoint of the TrainState's variables."""
    params, batch_stats, _ = pretrained.from_torchvision(synthetic_state_dict(depth, num_classes=5))
    model = dict(family="imagenet", depth=depth, residual=True, shortcut="B", stride_in_3x3=False, **model_fields)
    (workdir / "config.json").write_text(json.dumps({"name": f"resnet-{depth}", "dataset": "imagenette",
                                                     "model": model}))
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
    ckpt.save(step, {"params": params, "batch_stats": batch_stats, "step": np.int32(step)}, {})
    ckpt.close()
    return params, batch_stats


def test_cli_exports_a_run_and_describes_the_file(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    params, batch_stats = fake_run(tmp_path / "run")
    out = tmp_path / "r18.safetensors"
    assert pretrained.main(["export", f"--workdir={tmp_path / 'run'}", f"--out={out}"]) == 0
    assert f"wrote {out}: resnet18: 5 classes, basic blocks (v1 = v1.5)" in capsys.readouterr().out
    loaded_params, loaded_bs, info = pretrained.load(out)
    assert_trees_equal(loaded_params, params)
    assert_trees_equal(loaded_bs, batch_stats)
    assert info.metadata["step"] == "7" and info.metadata["run"] == "resnet-18" and not info.stride_in_3x3
    assert info.normalization == "mean"
    assert pretrained.main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: resnet18: 5 classes, basic blocks (v1 = v1.5) [file metadata], "
                              "11,179,077 parameters, shortcut B")
    assert '"dataset": "imagenette"' in printed


def test_cli_refuses_what_torchvision_cannot_hold(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"family": "cifar", "shortcut": "A"}}))
    assert pretrained.main(["export", f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'x.safetensors'}"]) == 2
    assert "has no torchvision layout: only residual ImageNet nets with shortcut B export" in capsys.readouterr().err
    assert pretrained.main(["info", str(tmp_path / "run" / "config.json")]) == 2
    assert "neither a .safetensors nor a torch .pth file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- preprocessing


def test_normalize():
    x = np.array([[[0, 128, 255]]], np.uint8)
    mean = np.asarray(pretrained.normalize(x, "mean"))
    np.testing.assert_allclose(mean, x / 255.0 - np.array(pretrained.IMAGENET_MEAN_RGB), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pretrained.normalize(x, "torchvision")),
                               mean / np.array(pretrained.IMAGENET_STD_RGB), atol=1e-6)
    with pytest.raises(ValueError, match="one of \\('mean', 'torchvision'\\)"):
        pretrained.normalize(x, "caffe")


def test_streamed_data_normalizes_as_configured():
    """config.normalization reaches the streamed data's device batch; the PCA colour shift is the same
    [0, 1]-unit shift under either normalisation."""
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    labels, rng = np.zeros(2, np.int32), jax.random.PRNGKey(0)
    shifts = {}
    for kind in pretrained.NORMALIZATIONS:
        plain, _ = tfds_stream.device_batch((images, labels), rng, 3, False, kind)
        np.testing.assert_array_equal(plain, pretrained.normalize(images, kind))
        lit, _ = tfds_stream.device_batch((images, labels), rng, 3, True, kind)
        shifts[kind] = np.asarray(lit - plain)
    np.testing.assert_allclose(shifts["torchvision"] * np.asarray(pretrained.IMAGENET_STD_RGB), shifts["mean"],
                               rtol=1e-4, atol=1e-7)
    assert np.abs(shifts["mean"]).max() > 0


def test_metadata_is_read_without_the_tensors(tmp_path, monkeypatch):
    path = save(tmp_path, synthetic_state_dict(18), metadata={"normalization": "mean", "step": "7"})
    monkeypatch.setattr(pretrained, "_read_safetensors", None)  # reading the tensors would fail
    assert pretrained.read_metadata(path) == {"normalization": "mean", "step": "7"}
    assert pretrained.normalization_of({"normalization": "mean"}) == "mean"
    assert pretrained.normalization_of({}) == pretrained.normalization_of({"normalization": "?"}) == "torchvision"
    (tmp_path / "w.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    assert pretrained.read_metadata(tmp_path / "w.pth") == {}  # torch files have none (and need no torch here)
    assert pretrained.normalization_note(str(tmp_path / "w.pth"), "mean").startswith(
        f"init_from {tmp_path / 'w.pth'} was trained on normalization='torchvision' inputs; this run feeds 'mean'")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:40])
    assert "truncated" in error_of(pretrained.read_metadata, tmp_path / "cut.safetensors")


# ----------------------------------------------------------------------------- against torchvision


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_logits_equal_torchvision_from_pth_and_safetensors(tv, tmp_path, depth):
    torch, _ = tv
    import safetensors.torch

    net = torchvision_net(tv, depth)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    from_pth = pretrained.load(tmp_path / "w.pth")
    from_safetensors = pretrained.load(tmp_path / "w.safetensors")
    for i in range(2):
        assert_trees_equal(from_pth[i], from_safetensors[i])
    params, batch_stats, info = from_safetensors
    assert info.depth == depth and info.num_classes == 1000 and info.num_params == TV_PARAMS[depth]
    x = images()
    theirs = torch_logits(tv, net, x)
    ours = our_logits(info, params, batch_stats, x)
    assert max_logit_error(ours, theirs) < 2e-5, np.abs(ours - theirs).max()
    if depth == 50:  # the stride placement matters, and v1.5 is what matches torchvision
        v1 = our_logits(info, params, batch_stats, x, stride_in_3x3=False)
        assert max_logit_error(v1, theirs) > 1e-2


def test_scanned_resnet101_logits_equal_torchvision(tv):
    net = torchvision_net(tv, 101, num_classes=10)
    params, batch_stats, info = pretrained.from_torchvision(net.state_dict())  # torch tensors directly
    assert info.scan and info.num_classes == 10
    x = images(1)
    assert max_logit_error(our_logits(info, params, batch_stats, x), torch_logits(tv, net, x)) < 2e-5


def test_torchvision_loads_the_export_strictly(tv, tmp_path):
    _, torchvision = tv
    import safetensors.torch

    net = torchvision_net(tv, 50)
    params, batch_stats, _ = pretrained.from_torchvision(net.state_dict())
    pretrained.export_safetensors(params, batch_stats, tmp_path / "export.safetensors", stride_in_3x3=True)
    fresh = torchvision.models.resnet50()
    fresh.load_state_dict(safetensors.torch.load_file(str(tmp_path / "export.safetensors")), strict=True)
    x = images(2)
    np.testing.assert_array_equal(torch_logits(tv, fresh.eval(), x), torch_logits(tv, net, x))
    again = pretrained.load(tmp_path / "export.safetensors")
    assert_trees_equal(again[0], params)
    assert_trees_equal(again[1], batch_stats)


def test_pth_checkpoints_and_bad_pth_files(tv, tmp_path):
    torch, _ = tv
    net = torchvision_net(tv, 18)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    torch.save(net.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("ckpt.pth", "legacy.pth"):
        params = pretrained.load(tmp_path / name)[0]
        np.testing.assert_array_equal(params["fc"]["kernel"], net.fc.weight.detach().numpy().T)
    data = (tmp_path / "ckpt.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    message = error_of(pretrained.load, tmp_path / "cut.pth")
    assert message.startswith(f"{tmp_path / 'cut.pth'}: not a readable torch state dict (") and "truncated" in message
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth")
    assert "holds a dict with keys epoch, not a state dict" in error_of(pretrained.load, tmp_path / "no_weights.pth")
