"""``psic compress``: image -> .psic (the base codec's bitstream)."""

from __future__ import annotations

from .common import add_codec_args, input_files


def add_parser(sub) -> None:
    p = sub.add_parser("compress", help="image -> .psic (the base codec's bitstream)")
    p.add_argument("input", help="PNG (8/16-bit, grey, RGB, RGBA) or JPEG")
    p.add_argument("output", help=".psic file to write")
    add_codec_args(p)
    p.add_argument("--adapter", metavar="DIR", help="adapter the file is meant for (recorded; bitstream unchanged)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT (never one of the inputs: the image, the checkpoint, the adapter)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..workflows import protect_file

    res = protect_file(args.input, args.output, adapter=args.adapter, codec=args.codec, quality=args.quality,
                       checkpoint=args.checkpoint, force=args.force, inputs=input_files(args))
    print(f"{res.path}: {res.width}x{res.height}, {res.file_bytes} bytes, {res.bpp:.4f} bpp (bitstream), "
          f"{res.file_bpp:.4f} bpp (file)")
    return 0
