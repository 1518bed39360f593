"""``psic``: the command line. Thin: parse, call the library, print. One module per command.

User errors (bad files, wrong adapters, wrong keys, missing images) print one
line, ``psic: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

#: the commands, in the order ``psic --help`` lists them (module names under psic_adapter.cli)
COMMANDS = ("compress", "decompress", "keygen", "rekey", "info", "train", "eval", "demo", "push", "bavaft")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(prog="psic", description="Privacy-Shielded Image Compression adapters for "
                                                              "CompressAI codecs.")
    parser.add_argument("--version", action="version", version=f"psic-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import PSICError

    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning  # a warning is a line for the user, not a source location
    try:
        return int(args.func(args) or 0)
    except PSICError as exc:
        print(f"psic: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("psic: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"psic: warning: {message}", file=sys.stderr if file is None else file)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
