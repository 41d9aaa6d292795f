"""CLI subcommands: one module each, with ``add_parser(subparsers)`` and ``run(args) -> int``.

``add_parser`` creates its parser with ``subparsers.add_parser(NAME, help=..., description=...)``
and calls ``parser.set_defaults(run=run)``. ``run`` returns the exit code, prints results (it is
CLI code) and raises ``qgraph.errors.QGraphError`` for anything the user caused.
"""

COMMANDS = [
    "compile",
    "passes",
    "pipeline",
    "diff",
    "export",
    "validate",
    "transcribe",
    "bench",
    "eval",
    "demo",
    "report",
]


def add_pass_module_option(parser) -> None:
    """``--pass-module FILE.py`` (repeatable), shared by the commands that resolve passes."""
    from pathlib import Path

    parser.add_argument(
        "--pass-module",
        action="append",
        default=[],
        type=Path,
        metavar="FILE.py",
        help="also load passes from this Python file (repeatable)",
    )
