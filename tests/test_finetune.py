"""Using trained nets: evaluate a checkpoint again; fine-tune it on another dataset."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import traverse_util

from helpers import read_jsonl, run_main
from resnet_jax import evaluate, finetune, train
from resnet_jax.config_args import load_config_module
from helpers import REPO

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
    params, stats, step = finetune.load_variables(str(workdir))
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
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        finetune.resolve_checkpoint(str(tmp_path / "nowhere"))
