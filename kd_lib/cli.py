"""Command line: ``python -m kd_lib check`` (console script ``kd-check``)."""

from __future__ import annotations

import argparse

__all__ = ["check_main", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kd_lib", description="Knowledge-distillation course tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="check Python, packages, the packaged teacher and the data files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kd_lib``; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        from kd_lib.check import main as check

        return check()
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects unknown ones


def check_main() -> int:
    """Entry point of the ``kd-check`` console script."""
    return main(["check"])
