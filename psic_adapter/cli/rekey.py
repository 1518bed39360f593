"""``psic rekey``: give an adapter a new owner's key (adapters whose full version is the base decode)."""

from __future__ import annotations

from .common import add_key_args, input_files, read_key


def add_parser(sub) -> None:
    p = sub.add_parser("rekey", help="copy an adapter with a new owner's key (the old key stops working)")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="adapter folder")
    p.add_argument("output", metavar="OUT_DIR", help="folder for the re-keyed adapter (ADAPTER_DIR itself needs --force)")
    add_key_args(p)
    p.add_argument("--new-key-file", metavar="F", required=True, help="file holding the new key (see `psic keygen`)")
    p.add_argument("--force", action="store_true", help="overwrite the adapter files in OUT_DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..adapter.keys import read_key_file
    from ..adapter.pretrained import change_adapter_key
    from ..errors import PSICError

    old = read_key(args)
    if old is None:
        raise PSICError("give the adapter's current key (--key-file or --key-env)")
    out = change_adapter_key(args.adapter_dir, args.output, old, read_key_file(args.new_key_file), force=args.force,
                             inputs=input_files(args))
    print(f"{out}: the adapter now opens with the key in {args.new_key_file}; its .psic files still decode, "
          "and the old key no longer gives the full version")
    return 0
