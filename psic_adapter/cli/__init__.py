"""``psic``: the command line. Thin: parse, call the library, print. One module per command.

User errors (bad files, wrong adapters, wrong keys, missing images) and the file
system's refusals (a read-only folder, a full disk) print one line,
``psic: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

#: the commands, in the order ``psic --help`` lists them (module names under psic_adapter.cli)
COMMANDS = ("compress", "decompress", "keygen", "rekey", "info", "train", "calibrate", "eval", "demo", "push",
            "bavaft")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``psic`` parser. ``command``: the one the command line names, or None. Where it names none (``psic
    --help``, ``--version``), commands whose module has a ``HELP`` line are listed by it without building their
    options (``psic train``'s come from ``TrainConfig`` and load torch), so that ``psic --help`` loads no torch."""
    import importlib

    from .. import __version__

    parser = argparse.ArgumentParser(prog="psic", description="Privacy-Shielded Image Compression adapters for "
                                                              "CompressAI codecs.")
    parser.add_argument("--version", action="version", version=f"psic-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        if command is None and getattr(module, "HELP", None):
            sub.add_parser(name, help=module.HELP)
        else:
            module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import PSICError

    given = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in given if not a.startswith("-")), None)
    parser = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(given)
    shown = warnings.showwarning
    warnings.showwarning = _show_warning  # a warning is a line for the user, not a source location
    try:
        return int(args.func(args) or 0)
    except PSICError as exc:
        print(f"psic: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the file system refused (a parent that is a file, a read-only folder, a full disk)
        from ..errors import describe_os_error

        print(f"psic: error: {describe_os_error(exc)}", file=sys.stderr)
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
