"""The ``diffobj`` command line. Each sub-command lives in its own module with ``add_parser`` and ``run``.

Usage errors (unknown names, options or values) exit with code 2 and a message naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import OptionError
from . import compare as _compare
from . import elbo as _elbo
from . import ema as _ema
from . import evaluate as _evaluate
from . import fid_ref as _fid_ref
from . import sample as _sample
from . import train as _train
from . import weightings as _weightings

__all__ = ["main", "build_parser"]

COMMANDS = [_weightings, _train, _sample, _elbo, _evaluate, _fid_ref, _compare, _ema]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse already exits 2; keep its format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffobj",
        description="Diffusion objectives as weighted ELBOs (Kingma & Gao 2023): inspect, train, evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OptionError as exc:
        print(f"diffobj {args.command}: error: {exc}", file=sys.stderr)
        return 2
