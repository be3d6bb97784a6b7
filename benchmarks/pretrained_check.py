"""How closely imported torchvision weights reproduce torchvision, and how long an import takes.

    pip install torch==2.13.0 torchvision==0.28.0     # as .ci/run does (or a matching pair)
    python benchmarks/pretrained_check.py [--depths=18,34,50,101,152] [--image_size=224] [--json]

For each depth: a random torchvision ResNet with non-trivial BN (running statistics of a random
batch, perturbed; random affine parameters) is saved as .pth and .safetensors, imported with
resnet_jax.pretrained.load, and our eval-mode logits are compared with torchvision's on the same
batch (max abs difference, and relative to the largest logit). Import time: the median of 3
loads of each file, after one untimed load (a warm file cache).
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import jax
import numpy as np
import safetensors.torch
import torch

from resnet_jax import cli
from resnet_jax import pretrained


def import_torchvision():
    """torchvision; beside the CPU build of torch its compiled ops don't load, and the model code doesn't need them."""
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules[name] = types.ModuleType(name)
        import torchvision
    return torchvision


def random_net(torchvision, depth: int, image_size: int):
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    with torch.no_grad():
        net.train()(torch.randn(4, 3, image_size, image_size))
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.5, 2.0))
            bn.running_mean.add_(0.2 * torch.randn_like(bn.running_mean) * bn.running_var.sqrt())
    return net.eval()


def median_load_s(path: Path) -> float:
    pretrained.load(path)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        pretrained.load(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(torchvision, depth: int, image_size: int, folder: Path) -> dict:
    net = random_net(torchvision, depth, image_size)
    pth, st = folder / f"resnet{depth}.pth", folder / f"resnet{depth}.safetensors"
    torch.save(net.state_dict(), pth)
    safetensors.torch.save_file(net.state_dict(), str(st))
    params, batch_stats, info = pretrained.load(st)
    x = np.random.default_rng(0).standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    model = info.create_model()
    ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
        {"params": params, "batch_stats": batch_stats}, x))
    diff = float(np.abs(ours - theirs).max())
    return {"model": info.model_name, "scan": info.scan, "image_size": image_size, "max_abs_diff": diff,
            "max_abs_logit": float(np.abs(theirs).max()), "relative": diff / float(np.abs(theirs).max()),
            "load_safetensors_s": median_load_s(st), "load_pth_s": median_load_s(pth),
            "file_mb": st.stat().st_size / 2**20}


def main():
    p = cli.parser(__doc__)
    p.add_argument("--depths", default="18,34,50,101,152")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torchvision = import_torchvision()
    with tempfile.TemporaryDirectory() as folder:
        for depth in (int(d) for d in args.depths.split(",")):
            r = check(torchvision, depth, args.image_size, Path(folder))
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"{r['model']:<10} scan={r['scan']!s:<5} {r['image_size']}px  max|diff| {r['max_abs_diff']:.2e}"
                      f" (max|logit| {r['max_abs_logit']:.1f}, relative {r['relative']:.1e})  load: safetensors"
                      f" {r['load_safetensors_s']:.3f} s, pth {r['load_pth_s']:.3f} s ({r['file_mb']:.0f} MB)",
                      flush=True)


if __name__ == "__main__":
    main()
