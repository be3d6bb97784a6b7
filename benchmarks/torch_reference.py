"""The same training step in PyTorch, for a side-by-side with benchmarks/throughput.py.

    pip install -e '.[bench]'        # torch (CPU build is enough)
    python -m benchmarks.torch_reference --model=resnet20 --batch_size=128 --json

A faithful PyTorch CIFAR ResNet of He et al. (2016), section 4.2: 3x3 conv stem, three stages of n
basic blocks (16/32/64 filters), option-A shortcuts (stride-2 subsample + zero-padded channels),
BN after every conv, global average pool, FC; ``plainN`` drops the shortcuts. The step is what
ours is: gather a batch of uint8 images held in memory (random order), normalise, pad-4 random
crop and random flip, forward, cross-entropy, backward, SGD momentum 0.9 with weight decay 1e-4.
Eager mode, ``channels_last`` by default (the faster layout on CPU), float32, all CPU threads.
Optional ``--compile`` uses ``torch.compile`` (its compile time is reported as ``compile_s``).

Prints one line per configuration; with ``--json`` a JSON object with the keys of throughput.py.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from resnet_jax import cli


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual, self.stride, self.extra = residual, stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.residual:
            sc = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            if self.extra:  # option A: zero-pad the new channels
                sc = F.pad(sc, (0, 0, 0, 0, 0, self.extra))
            y = y + sc
        return F.relu(y)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, residual: bool = True, num_classes: int = 10):
        super().__init__()
        n, rem = divmod(depth - 2, 6)
        if rem or n < 1:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(Block(cin, width, 2 if (i and b == 0) else 1, residual))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def parse_model(name: str) -> tuple[int, bool]:
    m = re.fullmatch(r"(plain|resnet)(\d+)", name)
    if not m:
        raise ValueError(f"unknown model {name!r}: resnetN or plainN with N = 6n+2")
    return int(m.group(2)), m.group(1) == "resnet"


def augment_batch(images_u8, mean, idx, generator):
    """uint8 NHWC [N,32,32,3] rows `idx` -> float NCHW batch: normalise, pad 4, random crop, random flip."""
    x = images_u8[idx].float().div_(255.0).sub_(mean)  # B,32,32,3
    b = x.shape[0]
    x = F.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4))  # B,3,40,40
    off = torch.randint(0, 9, (b, 2), generator=generator)
    rows = (off[:, 0, None] + torch.arange(32))[:, None, :, None].expand(b, 3, 32, 32)
    cols = (off[:, 1, None] + torch.arange(32))[:, None, None, :].expand(b, 3, 32, 32)
    x = x[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def benchmark(name: str, batch_size: int, *, steps: int = 10, warmup: int = 3, channels_last: bool = True,
              num_examples: int = 50_000, compile: bool = False) -> dict:
    depth, residual = parse_model(name)
    torch.manual_seed(0)
    model = CifarResNet(depth, residual)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_examples, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (num_examples,), generator=g)
    mean = images[:5000].float().mean(0) / 255.0
    perm = torch.randperm(num_examples, generator=g)

    def step(i):
        idx = perm[(i * batch_size) % (num_examples - batch_size):][:batch_size]
        x = augment_batch(images, mean, idx, g).contiguous(memory_format=memory_format)
        y = labels[idx]
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    forward = model
    compile_s = 0.0
    if compile:
        forward = torch.compile(model)
        t = time.perf_counter()
        step(0)
        compile_s = time.perf_counter() - t
    model.train()
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        loss = step(i)
        loss.item()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    return {"model": name, "batch_size": batch_size, "dtype": "float32", "framework": f"torch {torch.__version__}",
            "layout": "channels_last" if channels_last else "NCHW", "compiled": compile, "threads": torch.get_num_threads(),
            "step_s": step_s, "step_s_min": min(times), "step_s_max": max(times), "steps_timed": len(times),
            "img_per_s": batch_size / step_s, "compile_s": compile_s,
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--model", default="resnet20", help="comma-separated, e.g. resnet20,plain56")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--num_examples", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default, all cores)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.model.split(","):
        r = benchmark(name, args.batch_size, steps=args.steps, warmup=args.warmup, channels_last=not args.nchw,
                      num_examples=args.num_examples, compile=args.compile)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{r['model']:<10} batch {r['batch_size']} {r['layout']}{' compiled' if r['compiled'] else ''}: "
                  f"{r['step_s']:.3f} s/step ({r['step_s_min']:.3f}-{r['step_s_max']:.3f}), {r['img_per_s']:.1f} img/s, "
                  f"{r['threads']} threads, load {r['load_avg']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
