"""``psic decompress``: .psic -> image (encrypted by default, full with the owner's key)."""

from __future__ import annotations

from .common import add_key_args, input_files, read_key


def add_parser(sub) -> None:
    p = sub.add_parser("decompress", help=".psic -> image (encrypted by default, full with the owner's key)")
    p.add_argument("input")
    p.add_argument("output", help="image file to write (.png keeps 16-bit and alpha)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="the base codec's weights (as for compress); without it: codec.safetensors beside the "
                        "adapter, the shipped codec when it is the one, else the zoo's")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder or hub id")
    add_key_args(p)
    p.add_argument("--plain", action="store_true", help="decode with the base codec alone, no adapter")
    p.add_argument("--allow-format-1", action="store_true",
                   help="decode a format-1 file (psic-adapter 0.1), which has no latent checksum: a corrupted payload "
                        "then decodes to a wrong image without an error (refused by default)")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUTPUT (never one of the inputs: the .psic file, the key file, the checkpoint, the adapter)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..workflows import open_file

    inputs = input_files(args, args.input)
    res, header = open_file(args.input, args.output, adapter=args.adapter, key=lambda: read_key(args), plain=args.plain,
                            checkpoint=args.checkpoint, force=args.force, inputs=inputs,
                            allow_format_1=args.allow_format_1)
    shifted = " with the owner's per-photo shift" if res.get("photo_shift") else ""
    print(f"{res['path']}: {res['version']} version{shifted}, {header.width}x{header.height}")
    return 0
