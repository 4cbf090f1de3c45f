"""The ``diffobj`` command line. Each sub-command lives in its own module with ``add_parser`` and ``run``;
what they share is in :mod:`._common`. A new command is one module appended to :data:`COMMANDS`.

Exit codes, the same for every command:

- 0: done;
- 2: bad input (an unknown name, option or value, an unusable path): ``OptionError`` or an argparse error;
- 1: a runtime failure (a full disk, a failed computation);
- 130: interrupted (Ctrl-C).

Errors are one line, ``diffobj COMMAND: error: <path or option>: <cause>``; the traceback is printed only
with ``--debug`` (before or after the command) or ``DIFFOBJ_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import OptionError
from . import compare as _compare
from . import elbo as _elbo
from . import ema as _ema
from . import evaluate as _evaluate
from . import explain as _explain
from . import export as _export
from . import fid_ref as _fid_ref
from . import sample as _sample
from . import train as _train
from . import weightings as _weightings

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = [_weightings, _explain, _train, _sample, _elbo, _evaluate, _fid_ref, _compare, _export, _ema]

DEBUG_HELP = "print the traceback of an error (also DIFFOBJ_DEBUG=1)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse already exits 2; keep its format
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffobj",
        description="Diffusion objectives as weighted ELBOs (Kingma & Gao 2023): inspect, train, evaluate.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"diffobj (diffusion-objectives) {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.add_parser(sub)
    _add_debug(sub)
    return parser


def _add_debug(sub: argparse._SubParsersAction) -> None:
    """``--debug`` after the command (and its actions: ``weightings show ... --debug``) too."""
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def describe(exc: BaseException) -> str:
    """The one-line cause of ``exc``: ``path: reason`` for file-system errors, the message otherwise."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where != "" else exc.strerror
    if isinstance(exc, OptionError):
        return str(exc)
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("diffobj: interrupted", file=sys.stderr)
        return 130
    debug = bool(getattr(args, "debug", False)) or os.environ.get("DIFFOBJ_DEBUG", "") not in ("", "0")
    prefix = f"diffobj {args.command}: error:"
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"diffobj {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the boundary: every failure becomes one line and an exit code
        if debug:
            traceback.print_exc()
        usage = isinstance(exc, OptionError)
        hint = "" if usage or debug else " (--debug for the traceback)"
        print(f"{prefix} {describe(exc)}{hint}", file=sys.stderr)
        return 2 if usage else 1
