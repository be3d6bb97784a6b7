"""A small ImageNet-like TFDS dataset of real JPEGs, built offline, for tests and the input benchmark.

ImageNet cannot be downloaded here (and needs a manual download anywhere), but what the input
pipeline does per image — read a record, decode a JPEG, resize, crop, flip — depends only on the
image size and the JPEG encoding. This builds a TFDS dataset with the same features as
``imagenet2012`` (``image`` JPEG, ``label``, ``file_name``; ``train`` and ``validation``) whose
images have ImageNet's typical size (about 500x375, quality-90 JPEGs). Their pixels come from
CIFAR-10 images upscaled plus film grain (natural-image-like, ~90 KB per JPEG; ImageNet's average
is ~110 KB) when a CIFAR-10 TFDS folder is given, else from smooth random patterns (small JPEGs).

    python -m benchmarks.jpeg_dataset --data_dir /tmp/tfds --train 2000 --validation 500

Then ``--config.dataset=synthetic_jpeg --config.data_dir=/tmp/tfds`` trains on it.
"""
from __future__ import annotations

import io
import os

import numpy as np

from resnet_jax import cli

NAME = "synthetic_jpeg"


def make_builder(data_dir: str, num_train: int, num_validation: int, num_classes: int = 10,
                 sizes: tuple[tuple[int, int], ...] = ((375, 500), (500, 375), (333, 500), (500, 500)),
                 cifar_dir: str | None = None, quality: int = 90, grain: float = 16.0):
    """The builder (not yet prepared) of `NAME` in `data_dir`; call download_and_prepare() on it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow_datasets as tfds
    from PIL import Image

    def pixels(rng, index, height, width):
        if cifar is not None:  # upscaled CIFAR plus grain: ImageNet-like detail, so JPEG sizes are realistic
            small = cifar[index % len(cifar)]
            image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)).astype(np.float64)
            return np.clip(image + rng.normal(0, grain, image.shape), 0, 255).astype(np.uint8)
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(2, 12, (3, 2))
        channels = [np.sin(2 * np.pi * (freq[c, 0] * y + freq[c, 1] * x) + phase[c]) for c in range(3)]
        image = (np.stack(channels, -1) + 1) * 127.5 + rng.normal(0, 8, (height, width, 3))
        return np.clip(image, 0, 255).astype(np.uint8)

    def jpeg(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    cifar = None
    if cifar_dir:
        builder = tfds.builder("cifar10", data_dir=cifar_dir)
        cifar = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))["image"]

    class SyntheticJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        name = NAME

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=num_classes),
                "file_name": tfds.features.Text()}), supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", num_train),
                    "validation": self._generate_examples("validation", num_validation)}

        def _generate_examples(self, split, count):
            offset = 0 if split == "train" else 1_000_000
            for i in range(count):
                rng = np.random.default_rng(offset + i)
                height, width = sizes[i % len(sizes)]
                name = f"{split}_{i:07d}.JPEG"
                yield name, {"image": jpeg(pixels(rng, offset + i, height, width)), "label": i % num_classes,
                             "file_name": name}

    return SyntheticJpeg(data_dir=data_dir, file_format="tfrecord")


def build(data_dir: str, num_train: int, num_validation: int, **kwargs) -> str:
    """Prepares the dataset in `data_dir` (once) and returns `data_dir`."""
    builder = make_builder(data_dir, num_train, num_validation, **kwargs)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return data_dir


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--cifar_dir", default=None, help="a TFDS data_dir holding cifar10 (for natural pixels)")
    args = parser.parse_args()
    build(args.data_dir, args.train, args.validation, cifar_dir=args.cifar_dir)
    print(f"{NAME} prepared in {args.data_dir}")


if __name__ == "__main__":
    main()
