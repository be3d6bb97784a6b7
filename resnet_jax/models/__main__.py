"""``python -m resnet_jax.models``: layers, blocks, parameters and multiply-adds of every named net."""

from resnet_jax.models.counting import describe
from resnet_jax.models.registry import MODEL_NAMES


def main():
    print(f"{'model':<20} {'block':<18} {'layers':>6} {'blocks':>6} {'scan':>5} {'shortcut':>8} {'params':>12}"
          f" {'mult-adds':>10}")
    for name in MODEL_NAMES:
        d = describe(name)
        macs = f"{d['macs'] / 1e9:.2f}G" if d["macs"] >= 1e9 else f"{d['macs'] / 1e6:.1f}M"
        print(
            f"{name:<20} {d['block']:<18} {d['layers']:>6} {d['blocks']:>6} {'yes' if d['scan'] else 'no':>5}"
            f" {d['shortcut']:>8} {d['params']:>12,} {macs:>10}",
            flush=True,
        )


if __name__ == "__main__":
    main()
