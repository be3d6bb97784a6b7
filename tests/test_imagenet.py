"""ImageNet-style streaming: crop geometry, host shards, exact evaluation, resume, end to end.

Real JPEG records come from benchmarks/jpeg_dataset.py (a TFDS dataset with imagenet2012's
features, built offline into a temporary folder); `imagenet2012` itself is exercised under
tfds.testing.mock_data.
"""
import io
import json
import os

import numpy as np
import pytest

from helpers import REPO, read_jsonl, run_main, without_timing

from benchmarks import jpeg_dataset
from resnet_jax import data as datasets
from resnet_jax import optim, run_dir, sharding, step as steps
from resnet_jax.data import cifar, tfds_prepare
from resnet_jax.data import tfds_stream as ii
from resnet_jax.config_args import load_config_module

SMALL = ii.Geometry(image_size=32, min_resize=40, max_resize=64, eval_resize=40)
TINY_RUN = ("--config.batch_size=8", "--config.eval_batch_size=8", "--config.image_size=32",
            "--config.train_resize=(40, 64)", "--config.eval_resize=40", "--config.model.dtype=float32",
            "--config.shuffle_buffer=16", "--config.log_every=2", "--config.diagnostics_every=0",
            "--config.num_classes=10", "--config.train_examples=40")


@pytest.fixture(scope="module")
def tf():
    tfds_prepare.tfds()
    import tensorflow as tf

    return tf


@pytest.fixture(scope="session")
def jpeg_dir(tmp_path_factory):
    """40 training and 13 validation JPEGs of three sizes, in TFDS format."""
    return jpeg_dataset.build(str(tmp_path_factory.mktemp("tfds")), 40, 13, sizes=((60, 80), (80, 60), (50, 70)))


@pytest.fixture(scope="module")
def builder(jpeg_dir):
    tfds = tfds_prepare.tfds()
    return tfds.builder(jpeg_dataset.NAME, data_dir=jpeg_dir)


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def coordinate_image(height=300, width=400) -> np.ndarray:
    """Red encodes x and green encodes y, so a crop's pixels say where they came from."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([x / (width - 1) * 255, y / (height - 1) * 255, np.full_like(x, 128)], -1).round().astype(np.uint8)


def reference_crop(tf, image, short, top, left, size):
    """Resize the whole image, then crop: what the paper describes."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    resized = tf.image.resize(tf.cast(image, tf.float32), (round(h * scale), round(w * scale)), antialias=True)
    return resized[top:top + size, left:left + size].numpy()


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("short, top, left", [(256, 0, 0), (256, 10, 117), (480, 255, 416), (300, 37, 5)])
def test_resized_crop_matches_resize_then_crop(tf, fmt, short, top, left):
    encoded = encode(coordinate_image(), fmt)
    ours = ii.resized_crop(tf.constant(encoded), short, top, left, 224).numpy()
    ref = reference_crop(tf, tf.io.decode_image(encoded).numpy(), short, top, left, 224)
    assert ours.shape == (224, 224, 3)
    diff = np.abs(ours - ref)[..., :2]
    # Decoding only the window rounds its position and size to whole source pixels, which moves
    # crop pixels by up to ~1.5 source pixels at the far edge (one source pixel = 0.64 grey levels
    # of the red ramp). JPEG's own noise, sampled at slightly different positions, adds to it.
    assert diff.mean() < 0.6
    assert diff[4:-4, 4:-4].max() < (1.0 if fmt == "PNG" else 3.0)
    assert diff.max() < 4.0  # at the border the resize filter sees the window's edge, not the neighbours
    profile = np.abs(ours[..., 0].mean(0) - ref[..., 0].mean(0))  # where each column came from
    assert profile[4:-4].max() < (1.0 if fmt == "PNG" else 1.5)


def test_eval_image_is_the_centre_crop_of_the_256_image(tf):
    encoded = encode(coordinate_image(300, 400))  # -> 256 x 341, centre crop at (16, 58)
    ours = ii.eval_image(tf.constant(encoded), ii.Geometry()).numpy()
    ref = reference_crop(tf, tf.io.decode_image(encoded).numpy(), 256, 16, 58, 224)
    assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
    assert np.abs(ours.astype(float) - ref)[..., :2].mean() < 0.6  # + rounding to uint8


def test_train_image_crops_in_range_and_flips_half_the_time(tf):
    image = coordinate_image(300, 400)
    jpeg = tf.constant(encode(image))
    flips, lefts = 0, []
    for i in range(40):
        crop = ii.train_image(jpeg, tf.constant([7, i], tf.int64), ii.Geometry()).numpy().astype(float)
        assert crop.shape == (224, 224, 3)
        red = crop[..., 0].mean(axis=0)  # x coordinate along the row
        flipped = red[0] > red[-1]
        flips += flipped
        lefts.append(red[-1] if flipped else red[0])
        # scale in [256, 480] / 300: the crop spans 224 / scale source pixels, i.e. 140..262 of 400
        span = abs(red[-1] - red[0]) * 399 / 255
        assert 140 - 4 <= span <= 263 + 4
    assert 8 <= flips <= 32
    assert len({round(x) for x in lefts}) > 20  # random positions
    again = ii.train_image(jpeg, tf.constant([7, 3], tf.int64), ii.Geometry()).numpy()
    first = ii.train_image(jpeg, tf.constant([7, 3], tf.int64), ii.Geometry()).numpy()
    np.testing.assert_array_equal(again, first)  # stateless: a function of the seed


def test_ten_crops(tf):
    image = coordinate_image(300, 400)
    crops = ii.ten_crop_images(tf.constant(encode(image)), ii.Geometry()).numpy()
    assert crops.shape == (10, 224, 224, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])  # the flips
    centre = ii.eval_image(tf.constant(encode(image)), ii.Geometry()).numpy()
    assert np.abs(crops[4].astype(float) - centre)[..., :2].mean() < 1.0
    assert crops[0, 0, 0, 0] < 5 and crops[1, 0, -1, 0] > 250 and crops[2, -1, 0, 1] > 250  # corners


def test_geometry_errors():
    with pytest.raises(ValueError, match="image_size <= train_resize"):
        ii.Geometry(224, 200, 480, 256).check()
    with pytest.raises(ValueError, match="eval_resize 200 is smaller"):
        ii.Geometry(224, 256, 480, 200).check()


# ----------------------------------------------------------------------------- hosts, order, evaluation


@pytest.mark.parametrize("hosts", [2, 3])
def test_host_shards_are_disjoint_and_cover_the_split(builder, hosts):
    names = []
    for i in range(hosts):
        ds = builder.as_dataset(split=ii.host_split("train", i, hosts))
        names.append({ex["file_name"].numpy() for ex in ds})
    assert sum(len(n) for n in names) == 40 == len(set().union(*names))
    assert max(len(n) for n in names) - min(len(n) for n in names) <= 1
    assert ii.host_sizes(builder, "train", hosts) == [len(n) for n in names]


def epoch_batches(builder, epoch=0, skip=0, process_index=0, process_count=1, seed=0):
    ds = ii.train_epoch_dataset(builder, "train", seed=seed, epoch=epoch, skip_batches=skip, host_batch=4,
                                steps_per_epoch=40 // process_count // 4, geometry=SMALL,
                                process_index=process_index, process_count=process_count, shuffle_buffer=16)
    return [(i.copy(), l.copy()) for i, l in ds.as_numpy_iterator()]


def test_train_order_is_a_function_of_seed_epoch_and_step(builder):
    full = epoch_batches(builder)
    assert len(full) == 10
    images, labels = full[0]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    assert 0 <= labels.min() and labels.max() < 10 and images.max() > 100
    again = epoch_batches(builder)
    for (a, b), (c, d) in zip(full, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    resumed = epoch_batches(builder, skip=6)  # what a run resumed at step 6 reads
    assert len(resumed) == 4
    for (a, b), (c, d) in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # Each epoch visits every example once, in a new order.
    next_epoch = epoch_batches(builder, epoch=1)
    assert sorted(np.concatenate([l for _, l in full])) == sorted(np.concatenate([l for _, l in next_epoch]))
    assert not all(np.array_equal(a, c) for (a, _), (c, _) in zip(full, next_epoch))
    other_seed = epoch_batches(builder, seed=1)
    assert not np.array_equal(full[0][0], other_seed[0][0])


def test_train_batches_cross_epochs_and_resume_mid_epoch(builder):
    kwargs = dict(steps_per_epoch=10, seed=0, host_batch=4, geometry=SMALL, process_index=0, process_count=1,
                  shuffle_buffer=16)
    stream = ii.train_host_batches(builder, "train", start_step=0, **kwargs)
    first = [next(stream) for _ in range(14)]
    resumed = ii.train_host_batches(builder, "train", start_step=8, **kwargs)
    for step in range(8, 14):
        images, labels = next(resumed)
        np.testing.assert_array_equal(images, first[step][0])
        np.testing.assert_array_equal(labels, first[step][1])


@pytest.mark.parametrize("hosts, ten_crop", [(1, False), (3, False), (2, True)])
def test_evaluation_counts_every_example_once(builder, hosts, ten_crop):
    sizes = ii.host_sizes(builder, "validation", hosts)
    host_batch = 2
    num_batches = -(-max(sizes) // host_batch)
    labels, masks, counts = [], [], []
    for i in range(hosts):
        ds = ii.eval_dataset(builder, "validation", host_batch=host_batch, num_batches=num_batches,
                             num_examples=sizes[i], geometry=SMALL, process_index=i, process_count=hosts,
                             ten_crop=ten_crop)
        batches = list(ds.as_numpy_iterator())
        counts.append(len(batches))
        assert batches[0][0].shape == (host_batch,) + ((10,) if ten_crop else ()) + (32, 32, 3)
        labels += [l for _, ls, ms in batches for l, m in zip(ls, ms) if m]
        masks += [m for _, _, ms in batches for m in ms]
    assert len(set(counts)) == 1  # every host runs the same number of eval steps
    assert sum(masks) == len(labels) == 13
    expected = [int(ex["label"]) for ex in builder.as_dataset(split="validation").as_numpy_iterator()]
    assert sorted(labels) == sorted(expected)


def test_normalize_and_lighting():
    import jax

    images = np.full((4, 2, 2, 3), 255, np.uint8)
    out = ii.normalize(images)
    np.testing.assert_allclose(out[0, 0, 0], 1 - np.asarray(ii.MEAN_RGB), rtol=1e-6)
    lit = ii.lighting(jax.random.PRNGKey(0), out)
    shift = np.asarray(lit - out)
    assert np.allclose(shift, shift[:, :1, :1, :])  # one RGB offset per image
    assert 0 < np.abs(shift).max() < 0.2 and not np.allclose(shift[0], shift[1])


# ----------------------------------------------------------------------------- imagenet2012 itself (mock)


def imagenet_config(**overrides):
    c = load_config_module(str(REPO / "configs" / "imagenet.py")).get_config("depth=18")
    c.update(dict(batch_size=8, eval_batch_size=8, image_size=32, train_resize=(40, 64), eval_resize=40,
                  train_examples=24, num_epochs=1, log_every=1, shuffle_buffer=8, checkpoint_every=2,
                  diagnostics_every=0))
    c.model.dtype = "float32"
    c.wandb.mode = "disabled"
    c.update(overrides)
    return c


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_imagenet2012_mock_batches_and_training():
    """imagenet2012 under tfds.testing.mock_data: batch shapes and values, then real train steps and
    an exact evaluation of a small ImageNet net on them.

    (Checkpointing is left to the runs on real JPEG files below: mock_data swaps in a fake file
    system while `as_dataset` runs, which Orbax's background writes would see.)
    """
    import jax

    tfds = tfds_prepare.tfds()
    config = imagenet_config()
    mesh = sharding.make_mesh()
    with tfds.testing.mock_data(num_examples=24):
        data = datasets.get(config, mesh)
        assert (data.num_classes, data.num_train, data.num_test, data.steps_per_epoch) == (1000, 24, 24, 3)
        batches = data.train_inputs(0)
        images, labels = next(batches)
        assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (8,)
        assert len(images.sharding.device_set) == 8
        assert 0 <= int(labels.min()) and int(labels.max()) < 1000 and int(images.max()) > 128

        from resnet_jax import models

        model = models.from_config(config.model, data.num_classes)
        tx = optim.make_optimizer(config)
        state = jax.jit(lambda: steps.init_state(config, model, tx, data.num_classes))()
        step = steps.make_train_step(config, model, tx, mesh, data)
        state = step(state, (images, labels))
        for _ in range(2):
            state = step(state, next(batches))
        assert int(state.step) == 3 and np.isfinite(float(state.sums["loss"]))
        metrics = steps.make_evaluator(data, model, mesh)(state)
    assert set(metrics) == {"test/error", "test/loss", "test/top5_error"}
    assert 0 <= metrics["test/top5_error"] <= metrics["test/error"] <= 1


def test_imagenet2012_missing_says_where_the_tar_files_go(tmp_path):
    config = imagenet_config(data_dir=str(tmp_path))
    with pytest.raises(datasets.DatasetUnavailableError) as e:
        datasets.get(config, sharding.make_mesh())
    message = str(e.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message and "--config.manual_dir" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------- configs


def test_imagenet_configs():
    imagenet = load_config_module(str(REPO / "configs" / "imagenet.py"))
    c = imagenet.get_config("depth=34,residual=false")
    assert (c.name, c.model.family, c.model.shortcut, c.batch_size, c.model.dtype) == \
        ("plain-34", "imagenet", "A", 256, "bfloat16")
    assert c.steps_per_epoch == 5004 and c.num_train_steps == 90 * 5004
    assert optim.lr_boundaries(c) == (30 * 5004, 60 * 5004)
    c.batch_size = 512  # the schedule stays in epochs
    assert c.steps_per_epoch == 2502 and c.num_train_steps == 90 * 2502 and c.eval_every == 2502
    c.eval_every = 1000  # overriding one derived field leaves the others alone
    assert c.steps_per_epoch == 2502 and c.diagnostics_every == 2502
    assert imagenet.get_config("depth=50").model.shortcut == "B"
    assert imagenet.get_config("depth=34,shortcut=C").name == "resnet-34-C"
    with pytest.raises(ValueError, match="unknown config argument 'width'"):
        imagenet.get_config("width=2")

    sweep = load_config_module(str(REPO / "configs" / "imagenet_degradation.py"))
    assert sweep.get_sweep() == ["plain-18", "plain-34", "resnet-18", "resnet-34"]
    names = sweep.get_sweep("table3")
    configs = [sweep.get_config(f"run={n},table3") for n in names]
    assert [c.name for c in configs] == names
    assert [c.model.shortcut for c in configs] == ["A", "A", "A", "A", "B", "C"]
    assert sweep.get_config("run=plain-18,imagenette").dataset == "imagenette"
    assert sweep.get_config("run=plain-18,imagenette").steps_per_epoch == 9469 // 256
    with pytest.raises(ValueError, match="not in this sweep"):
        sweep.get_config("run=resnet-34-B")


def test_resume_refuses_a_changed_data_order():
    saved = {"shuffle_buffer": 10_000, "image_size": 224, "train_resize": [256, 480], "eval_resize": 256}
    now = {"shuffle_buffer": 5_000, "image_size": 224, "train_resize": (256, 480), "eval_resize": 288}
    assert run_dir.frozen_config_diff(saved, now) == ["shuffle_buffer"]  # eval_resize may change


def test_unknown_dataset_needs_num_classes():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*--config.num_classes=N"):
        datasets.num_classes("mnist")
    assert datasets.num_classes("mnist", 10) == 10
    assert datasets.REGISTRY["imagenet2012"].load is ii.load and datasets.REGISTRY["cifar10"].load is cifar.load


# ----------------------------------------------------------------------------- through main, resumed


COMMON = ("--config.checkpoint_every=3", *TINY_RUN)
CONFIG = "configs/imagenet_degradation.py:run={}"


def sweep_run(workdir, jpeg_dir, run, *extra):
    return run_main(workdir, f"--config.data_dir={jpeg_dir}", f"--config.dataset={jpeg_dataset.NAME}", *COMMON,
                    *extra, config=CONFIG.format(run), devices=4)


@pytest.fixture(scope="module")
def fig4_sweep(jpeg_dir, tmp_path_factory):
    """plain-18 and resnet-18 of the Fig. 4 sweep, 2 epochs each on the JPEG dataset, through main."""
    root = tmp_path_factory.mktemp("fig4")
    sweep_run(root / "plain-18", jpeg_dir, "plain-18", "--config.num_epochs=2", "--config.diagnostics_every=5")
    sweep_run(root / "resnet-18", jpeg_dir, "resnet-18", "--config.num_epochs=2")
    return root


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_main_streams_and_resumes_exactly(fig4_sweep, jpeg_dir, tmp_path):
    """A run stopped at step 6 and resumed equals the run never stopped (data order from (seed, step))."""
    part = tmp_path / "part"
    sweep_run(part, jpeg_dir, "resnet-18", "--config.num_train_steps=6")
    out = sweep_run(part, jpeg_dir, "resnet-18", "--config.num_epochs=2").stdout
    assert "resuming from step 6" in out
    a, b = read_jsonl(fig4_sweep / "resnet-18" / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] and a[-1]["step"] == 10
    first_end = next(r for r in b if r["step"] == 6)  # the stopped run evaluated at its last step
    for key in [k for k in first_end if k.startswith("test/")]:
        del first_end[key]
    assert without_timing(a) == without_timing(b)
    assert {r["step"] for r in a if "test/error" in r} == {5, 10}  # once per epoch
    saved = json.loads((fig4_sweep / "resnet-18" / "config.json").read_text())
    assert saved["runtime"]["num_train"] == 40 and saved["runtime"]["num_test"] == 13
    assert saved["model"]["shortcut"] == "A" and saved["runtime"]["steps_per_epoch"] == 5


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_fig4_and_report_from_the_sweep(fig4_sweep):
    import matplotlib

    matplotlib.use("Agg")
    from experiments import plot_degradation, report
    from resnet_jax.results import load_local_runs

    runs = load_local_runs([str(fig4_sweep)])
    assert [r.name for r in runs] == ["plain-18", "resnet-18"] and all(r.is_imagenet for r in runs)
    fig = plot_degradation.plot(runs, plot_degradation.default_title(runs))
    left, right = fig.axes
    assert (left.get_title(), right.get_title(), left.get_xlabel()) == ("plain", "ResNet", "epochs")
    test_line = next(l for l in right.lines if l.get_gid() == "resnet-18/test")
    assert list(test_line.get_xdata()) == [1.0, 2.0]  # evaluated after each epoch
    assert "synthetic_jpeg, 2 epochs" in fig._suptitle.get_text()
    assert plot_degradation.main([str(fig4_sweep)]) == 0
    assert (fig4_sweep / "fig4.png").exists() and (fig4_sweep / "fig4.pdf").exists()
    text = report.report(runs)
    assert "10-crop" in text and "not comparable" in text
    # Diagnostics on streamed data: measured on the first validation images (centre crops).
    diag = [r for r in read_jsonl(fig4_sweep / "plain-18" / "metrics.jsonl") if "diagnostics/grad_norm" in r]
    assert [r["step"] for r in diag] == [0, 5, 10]
    assert len(diag[0]["diagnostics/grad_norm"]) == 18 and len(diag[0]["diagnostics/response_std"]) >= 17


def test_ten_crop_scores_are_averaged_softmax():
    import jax
    import jax.numpy as jnp

    from resnet_jax import models

    model = models.create_model("cifar", depth=8, num_classes=10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    state = steps.TrainState(step=0, params=variables["params"], batch_stats=variables["batch_stats"],
                             opt_state=None, rng=None, warmup=None, error_ema=None, sums=None)
    crops = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 32, 32, 3))
    labels, mask = jnp.array([0, 1, 2, 3]), jnp.array([1.0, 1.0, 1.0, 0.0])
    sums = steps.batch_eval_sums(state, crops, labels, mask, model=model)
    probs = jax.nn.softmax(model.apply(variables, crops.reshape(12, 32, 32, 3))).reshape(4, 3, 10).mean(1)
    expected_error = float(((probs.argmax(-1) != labels) * mask).sum())
    expected_loss = float((-jnp.log(probs[jnp.arange(4), labels]) * mask).sum())
    assert float(sums["error"]) == expected_error
    assert float(sums["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    same = jnp.repeat(crops[:, :1], 3, axis=1)  # identical crops: the single-crop result
    single = steps.batch_eval_sums(state, crops[:, 0], labels, mask, model=model)
    repeated = steps.batch_eval_sums(state, same, labels, mask, model=model)
    assert float(repeated["error"]) == float(single["error"])
    assert float(repeated["loss"]) == pytest.approx(float(single["loss"]), rel=1e-5)


def test_report_knows_the_paper_imagenet_numbers():
    from experiments import report
    from resnet_jax.results import Run

    run = Run(name="resnet-34-B", depth=34, residual=True,
              config={"dataset": "imagenet2012", "model": {"shortcut": "B"}, "steps_per_epoch": 5004})
    assert report.paper_numbers(run) == ("-", "24.52")
    plain = Run(name="plain-34", depth=34, residual=False, config={"dataset": "imagenet2012", "model": {"shortcut": "A"}})
    assert report.paper_numbers(plain) == ("-", "28.54")


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_two_hosts_stream_their_own_shards_and_evaluate_exactly(jpeg_dir, tmp_path):
    """2 processes x 2 devices (resnet_jax.local_cluster): each host reads its half of the data and the
    global batch is assembled from both; the validation error equals a one-process evaluation of
    the same checkpoint; resuming on one host says that the data order changes."""
    import subprocess
    import sys

    from helpers import env_with_devices

    args = [f"--config={CONFIG.format('resnet-18')}", f"--workdir={tmp_path}", f"--config.data_dir={jpeg_dir}",
            f"--config.dataset={jpeg_dataset.NAME}", *COMMON, "--config.num_train_steps=5", "--compilation_cache="]
    proc = subprocess.run([sys.executable, "-m", "resnet_jax.local_cluster", "--hosts=2", "--devices_per_host=2",
                           "--heartbeat_s=30", "--", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env_with_devices(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["runtime"]["processes"] == 2 and saved["runtime"]["steps_per_epoch"] == 5  # 20 images per host
    logged = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert logged["step"] == 5

    evaluated = subprocess.run([sys.executable, "-m", "resnet_jax.evaluate", f"--workdir={tmp_path}"], cwd=REPO,
                               capture_output=True, text=True, timeout=600, env=env_with_devices(4))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["num_examples"] == 13 and result["split"] == "validation"
    assert result["test/error"] == pytest.approx(logged["test/error"], abs=1e-9)

    out = sweep_run(tmp_path, jpeg_dir, "resnet-18", "--config.num_train_steps=7").stdout
    assert "resuming on 1 hosts, saved on 2" in out and "resuming from step 5" in out


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_fig7_layer_responses_of_a_streamed_run(fig4_sweep, jpeg_dir):
    from experiments import plot_layer_responses

    result = plot_layer_responses.measure_run(str(fig4_sweep / "resnet-18"), num_images=8, chunk=4, data_dir=jpeg_dir)
    assert result["num_images"] == 8 and result["step"] == 10 and result["residual"]
    assert len(result["response_std"]) == len(result["layers"]) >= 17 and all(s > 0 for s in result["response_std"])
    assert len(result["branch_ratio"]) == 8  # ResNet-18: 8 basic blocks
