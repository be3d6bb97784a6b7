"""One shape for every command line's --help: the docstring's first paragraph, its flags, then the
example commands the docstring shows (its indented ``python ...`` / ``./launch.sh ...`` lines)."""
from __future__ import annotations

import argparse
import re
import sys

_EXAMPLE = re.compile(r"^\s{2,}((?:python|\./launch\.sh|pip|bash)\b.*?)\s*$")


def examples(doc: str) -> list[str]:
    """The example commands of a module docstring, continuation lines joined."""
    out, lines = [], (doc or "").splitlines()
    for i, line in enumerate(lines):
        match = _EXAMPLE.match(line)
        if not match:
            continue
        command = match.group(1)
        j = i
        while command.endswith("\\") and j + 1 < len(lines):
            j += 1
            command = command[:-1].rstrip() + " " + lines[j].strip()
        out.append(command.replace("\\\\", "\\"))
    return out


def parser(doc: str, prog: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help ends with the docstring's examples."""
    found = examples(doc)
    epilog = "examples:\n" + "\n".join(f"  {c}" for c in found) if found else None
    return argparse.ArgumentParser(prog=prog, description=(doc or "").strip().split("\n\n")[0], epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull", "--helpxml")


def absl_flags_parser(parse):
    """Wraps an absl flags parser so that --help exits 0, as argparse's does (absl exits 1)."""
    def parse_with_help(argv):
        try:
            return parse(argv)
        except SystemExit as e:
            if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
                sys.exit(0)
            raise
    return parse_with_help
