"""The ``qgraph`` command line. Subcommands live in ``qgraph.commands``, one module each.

Errors a user can cause print one line (``qgraph: error: ...``) and exit non-zero; ``--debug``
shows the traceback instead. Ctrl-C exits 130 and leaves no partial output (saves are atomic).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from qgraph import __version__
from qgraph.commands import COMMANDS
from qgraph.errors import QGraphError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, naming the command and where to get help.

    Subcommand parsers (``add_subparsers``) inherit the class, so ``qgraph compile
    --print-changed=bogus`` prints ``qgraph compile: error: argument --print-changed: invalid
    choice: 'bogus' (choose from 'diff', 'summary'); see 'qgraph compile --help'`` instead of the
    whole usage block.
    """

    def error(self, message: str):  # type: ignore[override]
        first = (message.strip().splitlines() or [""])[0]
        self.exit(2, f"{self.prog}: error: {first}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="qgraph",
        description="Compile speech-recognition models into fast, small, correct ONNX: export a "
        "raw bundle from PyTorch, then rewrite it with an ordered list of tested passes.",
        epilog="Run 'qgraph COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"qgraph {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks and debug logging on errors"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the library does (INFO level)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"qgraph.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"qgraph.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except QGraphError as err:
        if args.debug:
            raise
        print(f"qgraph: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("qgraph: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(
            f"qgraph: internal error: {type(err).__name__}: {first} (rerun with --debug for the "
            "traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
