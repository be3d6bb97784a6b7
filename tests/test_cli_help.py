"""Every command has a short --help with an example, and every config's docstring names every
argument it accepts after ':'."""
import pathlib
import re
import subprocess
import sys

import pytest

from resnet_jax import cli, config_args

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.py"))
MODULES = ["resnet_jax.main", "resnet_jax.evaluate", "resnet_jax.sweep", "resnet_jax.models", "resnet_jax.local_cluster",
           "resnet_jax.pretrained", "resnet_jax.dashboard", "resnet_jax.wandb_sweep"] \
    + sorted(f"benchmarks.{p.stem}" for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_examples_are_read_from_the_docstring():
    doc = """Title.

    python -m x --a=1
    ./launch.sh configs/y.py \\
        --workdir runs/y

Not an example: python inline.
"""
    assert cli.examples(doc) == ["python -m x --a=1", "./launch.sh configs/y.py --workdir runs/y"]
    assert "examples:\n  python -m x --a=1" in cli.parser(doc).format_help()


@pytest.mark.parametrize("command", [[sys.executable, "-m", m] for m in MODULES] + [[sys.executable, s] for s in SCRIPTS]
                         + [[str(REPO / "launch.sh")]], ids=lambda c: c[-1])
def test_help_is_short_and_shows_an_example(command):
    proc = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert re.search(r"^\s+(python|\./launch\.sh|pip)\b", text, re.M), f"no example command in:\n{text}"
    assert len(text.splitlines()) < 80, f"--help is {len(text.splitlines())} lines"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_docstring_names_every_argument(path, monkeypatch):
    accepted = set()
    real = config_args.parse_config_arg

    def recording(arg, defaults, flags=()):
        if sys._getframe(1).f_globals.get("__file__") == str(path):  # not the base config a sweep calls
            accepted.update(defaults)
            accepted.update(flags)
        return real(arg, defaults, flags)

    monkeypatch.setattr(config_args, "parse_config_arg", recording)
    module = config_args.load_config_module(str(path))
    arg = f"run={module.get_sweep()[0]}" if hasattr(module, "get_sweep") else None
    module.get_config(arg)
    assert accepted, f"{path.name} accepts no ':' arguments?"
    doc = module.__doc__ or ""
    missing = sorted(a for a in accepted if not re.search(rf"\b{re.escape(a)}\b", doc))
    assert not missing, f"{path.name}'s docstring does not name its arguments {missing}"
