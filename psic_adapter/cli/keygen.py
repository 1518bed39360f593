"""``psic keygen``: a new random owner key, in a file readable by its owner only."""

from __future__ import annotations


#: what a key does and does not do, in the words `psic keygen` prints (docs/threat-model.md says more)
KEY_SCOPE = ("It makes your adapter decode the full version (--key-file); without it your adapter gives the "
             "encrypted one. It is not a cipher: a .psic file is the base codec's bitstream, and anyone who has "
             "it and the public base codec decodes the full image (psic decompress --plain). What the adapter "
             "protects is the encrypted decode you serve, against machine vision: keep .psic files private, "
             "serve encrypted pixels.")


def add_parser(sub) -> None:
    p = sub.add_parser("keygen", help="write a new random key file (mode 600): it selects an adapter's full decode; "
                                      "it does not encrypt .psic files")
    p.add_argument("output")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..adapter.keys import write_key_file

    path = write_key_file(args.output, force=args.force)
    print(f"{path}: a new 256-bit key (readable by you only). {KEY_SCOPE}")
    return 0
