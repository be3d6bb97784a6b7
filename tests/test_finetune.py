"""Using trained nets: evaluate a checkpoint again; fine-tune it on another dataset; start from
published (torchvision-layout) weights and evaluate them."""
import dataclasses
import json
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
import tensorflow_datasets as tfds
from flax import traverse_util
from helpers import REPO, env_with_devices, read_jsonl, run_main, without_timing

from benchmarks import jpeg_dataset
from resnet_jax import checkpointing, evaluate, finetune, models, pretrained, run_dir, sharding, train
from resnet_jax import data as datasets
from resnet_jax import step as steps
from resnet_jax.config_args import load_config_module
from resnet_jax.data import tfds_stream

RUN = ("--config.batch_size=32", "--config.log_every=5", "--config.eval_every=10", "--config.checkpoint_every=10",
       "--config.eval_batch_size=512", "--config.num_train_steps=10")


@pytest.fixture(scope="module")
def source_run(tfds_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    run_main(workdir, f"--config.data_dir={tfds_data_dir}", *RUN)
    return workdir


def test_evaluate_gives_the_test_error_the_run_logged(source_run):
    result = evaluate.evaluate_run(str(source_run))
    logged = [r for r in read_jsonl(source_run / "metrics.jsonl") if "test/error" in r][-1]
    assert result["step"] == 10 and result["num_examples"] == 1017
    assert result["test/error"] == pytest.approx(logged["test/error"], abs=1e-9)
    with pytest.raises(ValueError, match="no checkpoint for step 3; available: 10"):
        evaluate.evaluate_run(str(source_run), step=3)
    with pytest.raises(ValueError, match="cifar100 has 100"):
        evaluate.evaluate_run(str(source_run), dataset="cifar100")


def finetune_config(source, tmp_path, **fields):
    c = load_config_module(REPO / "configs" / "cifar10.py").get_config("depth=8,dataset=cifar100")
    c.batch_size, c.eval_batch_size, c.num_train_steps = 16, 64, 4
    c.log_every = c.eval_every = c.checkpoint_every = 2
    c.init_from = str(source)
    c.wandb.mode = "disabled"
    for k, v in fields.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def mock_cifar100():
    """CIFAR-100-format splits from tfds.testing.mock_data, loaded by our real loader (no network here)."""
    from resnet_jax.data import cifar

    with tfds.testing.mock_data(num_examples=64):
        return {split: cifar.load_split("cifar100", split, None) for split in ("train", "test")}


@pytest.fixture
def cifar100_shaped(monkeypatch, mock_cifar100):
    """Training reads the mock splits; nothing else is mocked (tfds's mock also redirects file paths)."""
    from resnet_jax.data import cifar

    def load(dataset, split, data_dir):
        assert dataset == "cifar100"
        return mock_cifar100[split]

    monkeypatch.setattr(cifar, "load_split", load)


def restored_params(workdir):
    params, _, step = finetune.load_variables(str(workdir))
    return traverse_util.flatten_dict(params, sep="/"), step


def test_finetune_on_100_classes_loads_the_backbone_and_a_new_head(source_run, tmp_path, cifar100_shaped):
    src, _ = restored_params(source_run)
    train.train_and_evaluate(finetune_config(source_run, tmp_path, freeze_backbone=True), str(tmp_path / "probe"))
    new, step = restored_params(tmp_path / "probe")
    assert step == 4 and new["fc/kernel"].shape == (64, 100) and src["fc/kernel"].shape == (64, 10)
    backbone = [k for k in src if not k.startswith("fc/")]
    assert len(backbone) > 10
    for k in backbone:  # frozen: bit-identical after 4 training steps
        np.testing.assert_array_equal(new[k], src[k], err_msg=k)
    runtime = json.loads((tmp_path / "probe" / "config.json").read_text())["runtime"]
    assert runtime["init_from"]["step"] == 10 and runtime["init_from"]["reinitialized"] == ["fc/bias", "fc/kernel"]


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_full_finetune_moves_the_backbone_at_its_own_rate(source_run, tmp_path, cifar100_shaped):
    src, _ = restored_params(source_run)
    config = finetune_config(source_run, tmp_path, backbone_learning_rate=0.01, num_train_steps=2)
    train.train_and_evaluate(config, str(tmp_path / "ft"))
    new, _ = restored_params(tmp_path / "ft")
    assert any(not np.array_equal(new[k], src[k]) for k in src if not k.startswith("fc/"))


def test_mismatched_architecture_names_the_parameters(source_run, tmp_path, cifar100_shaped):
    config = finetune_config(source_run, tmp_path)
    config.model.depth = 14
    with pytest.raises(ValueError, match="the checkpoint's parameters do not match this model: .*missing in checkpoint"):
        train.train_and_evaluate(config, str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        finetune.resolve_checkpoint(str(tmp_path / "nowhere"))


def test_missing_checkpoint_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for path, says in [(tmp_path / "nowhere", "no such file or folder"), (tmp_path / "empty", "no checkpoint there")]:
        with pytest.raises(finetune.InitFromNotFound, match=says) as e:
            finetune.resolve_checkpoint(str(path))
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)  # main prints ValueErrors in one line


def test_main_says_in_one_line_that_init_from_is_missing(tfds_data_dir, tmp_path):
    proc = run_main(tmp_path / "run", f"--config.data_dir={tfds_data_dir}", *RUN, "--config.init_from=/nowhere",
                    devices=2, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: init_from='/nowhere': no such file or folder; give a weights file (.safetensors, .pth), "
        "a run's workdir or WORKDIR/checkpoints/STEP")


# ----------------------------------------------------------------------------- diverged runs


def diverged_copy(source_run, tmp_path, **bad_steps):
    """A copy of the source run with more checkpoints, each the last one's state passed through a function."""
    workdir = tmp_path / "diverged"
    shutil.copytree(source_run, workdir)
    config = evaluate.load_run_config(str(workdir))
    mesh = sharding.make_mesh()
    state = evaluate.restore_state(config, str(workdir), 10, models.from_config(config.model, 10), 10, mesh)
    ckpt = checkpointing.Checkpointer(run_dir.checkpoint_dir(str(workdir)))
    for name, damage in bad_steps.items():
        ckpt.save(int(name[1:]), damage(state), {})
    ckpt.close()
    return str(workdir)


def test_evaluating_a_diverged_checkpoint_says_so(source_run, tmp_path):
    nan_weights = lambda s: s.replace(params=jax.tree.map(lambda a: a * float("nan"), s.params))
    # Finite weights whose logits overflow (a diverged run's last finite step): NaN loss.
    overflow = lambda s: s.replace(params={**s.params, "fc": {**s.params["fc"], "kernel": np.full(
        s.params["fc"]["kernel"].shape, 3e38, np.float32)}})
    workdir = diverged_copy(source_run, tmp_path, s20=nan_weights, s30=overflow)
    with pytest.raises(evaluate.Diverged) as e:
        evaluate.evaluate_run(workdir, step=20)
    assert str(e.value) == (f"checkpoint 20 of {workdir} holds non-finite weights: the run diverged; "
                            "evaluate an earlier step (--step=N, available: 10)")
    with pytest.raises(evaluate.Diverged, match=r"checkpoint 30 of .* gives a non-finite test loss \((nan|inf)\): the run "
                                                r"diverged; evaluate an earlier step \(--step=N, available: 10, 20\)"):
        evaluate.evaluate_run(workdir)
    assert evaluate.evaluate_run(workdir, step=10)["step"] == 10


def test_evaluate_without_a_source_is_a_one_line_usage_error():
    proc = subprocess.run([sys.executable, "-m", "resnet_jax.evaluate"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env_with_devices(1), check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {evaluate.USAGE}"
    assert "--weights=resnet50.safetensors --dataset=imagenet2012" in evaluate.USAGE


# ----------------------------------------------------------------------------- published (torchvision-layout) weights


IMAGENET_RUN = ("--config.batch_size=8", "--config.eval_batch_size=8", "--config.image_size=32",
                "--config.train_resize=(40, 64)", "--config.eval_resize=40", "--config.model.dtype=float32",
                "--config.shuffle_buffer=16", "--config.log_every=2", "--config.eval_every=2",
                "--config.checkpoint_every=2", "--config.diagnostics_every=0", "--config.num_classes=10",
                "--config.train_examples=40", "--config.freeze_backbone=true", "--config.normalization=torchvision")


def random_variables(model, seed=0):
    """He-normal conv and fc weights, unit BN scales, BN statistics near (0, 1): no jit, no compilation."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.8, 1.2, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)  # biases, BN means

    variables = models.abstract_variables(model, (1, 32, 32, 3))
    return (jax.tree_util.tree_map_with_path(fill, variables["params"]),
            jax.tree_util.tree_map_with_path(fill, variables["batch_stats"]))


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A random resnet18 (1000 classes) exported in torchvision's layout."""
    params, stats = random_variables(models.create_model("resnet18"))
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    pretrained.export_safetensors(params, stats, path)
    return path, params, stats


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    return jpeg_dataset.build(str(tmp_path_factory.mktemp("tfds")), 40, 13, sizes=((60, 80), (80, 60)))


def imagenet_main(workdir, jpeg_dir, weights, *extra):
    return run_main(workdir, f"--config.data_dir={jpeg_dir}", "--config.dataset=synthetic_jpeg",
                    f"--config.init_from={weights}", *IMAGENET_RUN, *extra,
                    config="configs/imagenet.py:depth=18,shortcut=B", devices=2)


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_finetune_from_imported_weights_through_main_resumes_exactly(resnet18_weights, jpeg_dir, tmp_path):
    """A linear probe on 10 classes from torchvision-layout weights: the backbone loads bit-identically,
    fc is new, config.json records the weights; stopped at step 2 and resumed, it logs the same metrics."""
    weights, params, stats = resnet18_weights
    out = imagenet_main(tmp_path / "full", jpeg_dir, weights, "--config.num_train_steps=4").stdout
    assert f"initialised from {weights}" in out and "new: fc/bias, fc/kernel" in out
    new_params, new_stats, step = finetune.load_variables(str(tmp_path / "full"))
    assert step == 4 and new_params["fc"]["kernel"].shape == (512, 10)
    flat_new, flat_src = traverse_util.flatten_dict(new_params, sep="/"), traverse_util.flatten_dict(params, sep="/")
    for k in [k for k in flat_src if not k.startswith("fc/")]:  # frozen: what was loaded, bit for bit
        np.testing.assert_array_equal(flat_new[k], flat_src[k], err_msg=k)
    for k, v in traverse_util.flatten_dict(stats, sep="/").items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(new_stats, sep="/")[k], v, err_msg=k)
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    record = saved["runtime"]["init_from"]
    assert record["reinitialized"] == ["fc/bias", "fc/kernel"] and record["step"] is None
    assert record["weights"].startswith("resnet18: 1000 classes") and record["normalization"] == "torchvision"
    assert record["metadata"]["arch"] == "resnet18" and saved["normalization"] == "torchvision"

    imagenet_main(tmp_path / "part", jpeg_dir, weights, "--config.num_train_steps=2")
    resumed = imagenet_main(tmp_path / "part", jpeg_dir, weights, "--config.num_train_steps=4").stdout
    assert "resuming from step 2" in resumed
    full, part = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in full] == [2, 4] and "test/error" in full[-1]
    assert without_timing(full) == without_timing(part)
    assert json.loads((tmp_path / "part" / "config.json").read_text())["runtime"]["init_from"] == record


def abstract_state(**model_fields):
    """A stand-in TrainState with the params tree shapes of a model (nothing materialised)."""
    variables = models.abstract_variables(models.create_model("imagenet", **model_fields), (1, 32, 32, 3))
    return types.SimpleNamespace(params=variables["params"], batch_stats=variables["batch_stats"])


def refusal(weights, state, model_config=None):
    with pytest.raises(ValueError) as e:
        finetune.start_from_pretrained(state, str(weights), None, model_config)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_weights_that_do_not_fit_the_model_say_what_to_set(resnet18_weights, tmp_path):
    weights = resnet18_weights[0]
    assert refusal(weights, abstract_state(depth=18, shortcut="A")) == (
        f"init_from={weights}: resnet18 weights have projection shortcuts where the shape changes (option B); "
        "this run's model has option A: use --config=configs/imagenet.py:depth=18,shortcut=B")
    assert refusal(weights, abstract_state(depth=34)) == (
        f"init_from={weights}: resnet18 weights; this run's model is resnet34: "
        "use --config=configs/imagenet.py:depth=18,shortcut=B")
    assert "this run's model has option C" in refusal(weights, abstract_state(depth=18, shortcut="C"))
    assert "(residual=false)" in refusal(weights, abstract_state(depth=18), {"residual": False})
    cifar = abstract_state(depth=18)
    cifar.params = {**cifar.params, "stem_conv": {"kernel": np.zeros((3, 3, 3, 64))}}
    assert "fit torchvision's ImageNet ResNets only" in refusal(weights, cifar)

    v15 = pretrained.WeightsInfo(depth=50, num_classes=1000, stride_in_3x3=True, scan=False, num_params=0,
                                 stride_source=pretrained.DEFAULT_STRIDE_SOURCE)
    resnet50 = abstract_state(depth=50).params
    assert finetune.weights_mismatch(v15, resnet50, {"stride_in_3x3": False}) == (
        "resnet50 weights are v1.5 (stride in the 3x3 conv) [default (torchvision/timm weights are v1.5)]; "
        "this run's model is v1: set --config.model.stride_in_3x3=true")
    v1 = dataclasses.replace(v15, stride_in_3x3=False, stride_source="file metadata")
    assert finetune.weights_mismatch(v1, resnet50, {"stride_in_3x3": True}).endswith("stride_in_3x3=false")
    assert finetune.weights_mismatch(v15, resnet50, {"stride_in_3x3": True}) is None
    assert finetune.weights_mismatch(v15, resnet50) is None  # without the config: v1/v1.5 cannot be told
    scanned = abstract_state(depth=101).params
    assert finetune.architecture(scanned) == {"imagenet": True, "depth": 101, "shortcut": "B"}


def test_broken_weights_files_are_refused_in_one_line(resnet18_weights, tmp_path, monkeypatch):
    weights = resnet18_weights[0]
    state = abstract_state(depth=18, shortcut="B")
    (tmp_path / "cut.safetensors").write_bytes(weights.read_bytes()[:1000])
    assert "truncated" in refusal(tmp_path / "cut.safetensors", state)
    tensors, metadata = pretrained.read_state_dict(weights)
    del tensors["layer3.1.bn2.running_var"]
    safetensors.numpy.save_file(tensors, str(tmp_path / "gap.safetensors"), metadata=metadata)
    assert refusal(tmp_path / "gap.safetensors", state).endswith("resnet18 weights: missing layer3.1.bn2.running_var")
    (tmp_path / "w.pth").write_bytes(b"PK\x03\x04" + bytes(100))
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed: still one line for main
    assert "w.pth: reading a torch .pth file needs torch" in refusal(tmp_path / "w.pth", state)


def test_weights_load_bit_identically_into_a_state(resnet18_weights):
    """Unfrozen fine-tuning starts from the same tensors: the whole backbone, and a new fc (10 classes here)."""
    weights, params, stats = resnet18_weights
    config = load_config_module(REPO / "configs" / "imagenet.py").get_config("depth=18,shortcut=B")
    fresh_params, fresh_stats = random_variables(models.from_config(config.model, 10), seed=1)
    state = steps.TrainState(step=0, params=fresh_params, batch_stats=fresh_stats, opt_state=None, rng=None,
                             warmup=None, error_ema=None, sums=None)
    mesh = sharding.make_mesh(jax.devices()[:2])
    loaded, report = finetune.start_from_pretrained(state, str(weights), sharding.replicated(mesh), config.model)
    flat = traverse_util.flatten_dict(jax.device_get(loaded.params), sep="/")
    for k, v in traverse_util.flatten_dict(params, sep="/").items():
        if not k.startswith("fc/"):
            np.testing.assert_array_equal(flat[k], v, err_msg=k)
    np.testing.assert_array_equal(flat["fc/kernel"], fresh_params["fc"]["kernel"])  # kept as initialised
    flat_stats = traverse_util.flatten_dict(jax.device_get(loaded.batch_stats), sep="/")
    for k, v in traverse_util.flatten_dict(stats, sep="/").items():
        np.testing.assert_array_equal(flat_stats[k], v, err_msg=k)
    assert report["reinitialized"] == ["fc/bias", "fc/kernel"] and report["path"] == str(weights)
    assert report["weights"] == "resnet18: 1000 classes, basic blocks (v1 = v1.5) [default (torchvision/timm " \
        "weights are v1.5)], 11,689,512 parameters, shortcut B"


def test_normalization_note_for_weights_trained_on_other_inputs(resnet18_weights, jpeg_dir):
    weights = str(resnet18_weights[0])
    assert pretrained.normalization_note(weights, "torchvision") is None
    assert pretrained.normalization_note(str(REPO), "mean") is None  # a run's folder: nothing to say
    config = load_config_module(REPO / "configs" / "imagenet.py").get_config("depth=18,shortcut=B")
    config.update({"dataset": "synthetic_jpeg", "data_dir": jpeg_dir, "num_classes": 10, "batch_size": 8,
                   "train_examples": 40, "init_from": weights})
    data = tfds_stream.load(config, sharding.make_mesh(), 10)
    assert data.normalization == "mean" and data.notes({}) == [
        (f"init_from {weights} was trained on normalization='torchvision' inputs; this run feeds 'mean': "
         "add --config.normalization=torchvision to feed it what it was trained on")]
    assert data.notes({"processes": 1}) == []  # said when the run starts, not at every resume
    config.normalization = "caffe"
    with pytest.raises(ValueError, match="normalization='caffe': use --config.normalization=mean"):
        tfds_stream.load(config, sharding.make_mesh(), 10)


def test_evaluate_weights_on_mock_imagenet2012(resnet18_weights):
    """--weights evaluation gives finite metrics, equal to the evaluator's on the same net and data."""
    weights = resnet18_weights[0]
    small = {"batch_size": 8, "eval_batch_size": 8, "image_size": 32, "train_resize": (40, 64), "eval_resize": 40}
    with tfds.testing.mock_data(num_examples=16):
        result = evaluate.evaluate_weights(str(weights), "imagenet2012", **small)
        crops = evaluate.evaluate_weights(str(weights), "imagenet2012", ten_crop=True, **small)
        params, stats, info = pretrained.load(weights)
        config = evaluate.weights_config(info, "imagenet2012", None, False, **small)
        mesh = sharding.make_mesh()
        data = datasets.get(config, mesh)
        state = steps.TrainState(step=0, params=params, batch_stats=stats, opt_state=None, rng=None, warmup=None,
                                 error_ema=None, sums=None)
        direct = steps.make_evaluator(data, info.create_model(), mesh, top5=True)(jax.device_put(state))
    assert result["num_examples"] == 16 and result["split"] == "validation" and result["step"] is None
    assert result["normalization"] == "torchvision" and data.normalization == "torchvision"
    assert {k: result[k] for k in direct} == direct
    assert all(np.isfinite(v) for v in direct.values()) and 0 <= direct["test/error"] <= 1
    assert crops["ten_crop"] and crops["num_examples"] == 16 and np.isfinite(crops["test/loss"])
    assert crops["test/loss"] != result["test/loss"]
    assert evaluate.result_line(crops).startswith("resnet18: imagenet2012 validation (10-crop) error ")
    with pytest.raises(ValueError, match="has 1000 classes, cifar10 has 10"):
        evaluate.evaluate_weights(str(weights), "cifar10")
