"""``psic keygen``: a new random owner key, in a file readable by its owner only."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("keygen", help="write a new random key file (mode 600)")
    p.add_argument("output")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..adapter.keys import write_key_file

    path = write_key_file(args.output, force=args.force)
    print(f"{path}: a new 256-bit key (readable by you only). Keep it: without it the full version is lost.")
    return 0
