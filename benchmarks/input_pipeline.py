"""Images/s one host's ImageNet input pipeline delivers, with the paper's augmentation.

    python -m benchmarks.input_pipeline                                   # synthetic ImageNet-size JPEGs
    python -m benchmarks.input_pipeline --dataset=imagenet2012 --data_dir=DATA_DIR
    python -m benchmarks.input_pipeline --eval --json

Runs the real pipeline of resnet_jax/data/tfds_stream.py (TFDS records -> decode the crop's window
-> resize -> flip -> batches of uint8; or the centre crop with --eval) on this host, without the
devices, and reports images/s after a warm-up (the shuffle buffer filled). Compare it with the
training throughput of the accelerators this host feeds (benchmarks/throughput.py): if the
pipeline is slower, the accelerators wait. Without --dataset a TFDS dataset of ImageNet-size
JPEGs (benchmarks/jpeg_dataset.py) is built once in --data_dir, with CIFAR-10 pixels upscaled
when --cifar_dir is given, so that the JPEG sizes are natural-image-like.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import jpeg_dataset  # noqa: E402
from resnet_jax import cli
from resnet_jax.data import tfds_prepare  # noqa: E402
from resnet_jax.data import tfds_stream as imagenet_input  # noqa: E402


def dataset_stats(builder, split: str, n: int = 200) -> dict:
    """Mean encoded size and pixel size of the first `n` images."""
    import tensorflow as tf

    ds = imagenet_input.records(builder, split, shuffle_seed=None).take(n)
    sizes, pixels = [], []
    for image, _ in ds.as_numpy_iterator():
        sizes.append(len(image))
        h, w = tf.image.extract_jpeg_shape(image).numpy()[:2]
        pixels.append(h * w)
    return {"mean_jpeg_kb": sum(sizes) / len(sizes) / 1024, "mean_megapixels": sum(pixels) / len(pixels) / 1e6}


def measure(iterator, batches: int, warmup: int, batch_size: int) -> dict:
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"images_per_s": batches * batch_size / seconds, "seconds": seconds, "batches": batches}


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--dataset", default=jpeg_dataset.NAME)
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "resnet_jax_bench_tfds"))
    p.add_argument("--cifar_dir", default=None, help="TFDS data_dir with cifar10, for natural pixels")
    p.add_argument("--num_images", type=int, default=2000, help="size of the synthetic dataset")
    p.add_argument("--batch_size", type=int, default=256, help="per host")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--shuffle_buffer", type=int, default=10_000)
    p.add_argument("--eval", action="store_true", help="the evaluation pipeline (centre crop) instead")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    tfds = tfds_prepare.tfds()
    if args.dataset == jpeg_dataset.NAME:
        jpeg_dataset.build(args.data_dir, args.num_images, max(args.num_images // 4, 1), cifar_dir=args.cifar_dir)
    builder = tfds.builder(args.dataset, data_dir=args.data_dir)
    if not builder.is_prepared():
        print(f"error: {args.dataset} is not prepared in {args.data_dir}", file=sys.stderr)
        return 2
    geometry = imagenet_input.Geometry(image_size=args.image_size)
    if args.eval:
        split = "validation"
        n = imagenet_input.count_examples(builder, split)
        batches = min(args.batches, n // args.batch_size) or 1
        ds = imagenet_input.eval_dataset(builder, split, host_batch=args.batch_size, num_batches=-(-n // args.batch_size),
                                         num_examples=n, geometry=geometry, process_index=0, process_count=1)
        iterator, warmup = ds.repeat().as_numpy_iterator(), min(args.warmup, 1)
    else:
        split = "train"
        n = imagenet_input.count_examples(builder, split)
        batches = args.batches
        iterator = imagenet_input.train_host_batches(
            builder, split, start_step=0, steps_per_epoch=max(n // args.batch_size, 1), seed=0,
            host_batch=args.batch_size, geometry=geometry, process_index=0, process_count=1,
            shuffle_buffer=args.shuffle_buffer)
        warmup = args.warmup
    result = measure(iterator, batches, warmup, args.batch_size)
    result.update(dataset=args.dataset, split=split, pipeline="eval" if args.eval else "train",
                  batch_size=args.batch_size, image_size=args.image_size, cpus=os.cpu_count(),
                  load_avg=os.getloadavg()[0], **dataset_stats(builder, split))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['pipeline']} pipeline, {args.dataset} ({result['mean_jpeg_kb']:.0f} KB, "
              f"{result['mean_megapixels']:.2f} MP per image): {result['images_per_s']:.0f} images/s on this host "
              f"({result['cpus']} CPUs, {result['images_per_s'] / result['cpus']:.0f} per CPU; "
              f"load {result['load_avg']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
