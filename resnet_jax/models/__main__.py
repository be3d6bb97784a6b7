"""Layers, blocks, parameters and multiply-adds of every named net (the paper's counts, asserted by
the tests):

    python -m resnet_jax.models
    python -m resnet_jax.models --only=resnet56,plain56
"""

from resnet_jax import cli
from resnet_jax.models.counting import describe
from resnet_jax.models.registry import MODEL_NAMES


def main(argv=None):
    parser = cli.parser(__doc__, prog="python -m resnet_jax.models")
    parser.add_argument("--only", default="", help="comma-separated net names (default: every named net)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODEL_NAMES)
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown:
        parser.error(f"unknown net {', '.join(unknown)}; valid: {', '.join(MODEL_NAMES)}")
    print(f"{'model':<20} {'block':<18} {'layers':>6} {'blocks':>6} {'scan':>5} {'shortcut':>8} {'params':>12}"
          f" {'mult-adds':>10}")
    for name in names:
        d = describe(name)
        macs = f"{d['macs'] / 1e9:.2f}G" if d["macs"] >= 1e9 else f"{d['macs'] / 1e6:.1f}M"
        print(
            f"{name:<20} {d['block']:<18} {d['layers']:>6} {d['blocks']:>6} {'yes' if d['scan'] else 'no':>5}"
            f" {d['shortcut']:>8} {d['params']:>12,} {macs:>10}",
            flush=True,
        )


if __name__ == "__main__":
    main()
