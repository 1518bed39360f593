"""``psic compress``: image -> .psic (the base codec's bitstream)."""

from __future__ import annotations

import sys

from .common import add_codec_args, add_shift_args, input_files, shift_search_of


def add_parser(sub) -> None:
    p = sub.add_parser("compress", help="image -> .psic (the base codec's bitstream)")
    p.add_argument("input", help="PNG (8/16-bit, grey, RGB, RGBA) or JPEG")
    p.add_argument("output", help=".psic file to write")
    add_codec_args(p)
    p.add_argument("--adapter", metavar="DIR", help="adapter the file is meant for (recorded; bitstream unchanged)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT (never one of the inputs: the image, the checkpoint, the adapter)")
    add_shift_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..fileio import check_output
    from ..workflows import protect_file
    from .common import check_shift_args

    search = check_shift_args(args)
    if search is not None:  # everything that can be refused is refused before the target loads
        if not args.adapter:
            raise ConfigError("--shift-for needs --adapter DIR (a 'spatial' adapter)")
        from ..adapter.photo_shift import check_shiftable
        from ..bitstream.coding import check_psic_name

        check_shiftable(args.adapter)
        check_output(args.output, force=args.force, inputs=[args.input, *input_files(args)])
        check_psic_name(args.output, args.force)
        search = shift_search_of(args, search)
    res = protect_file(args.input, args.output, adapter=args.adapter, codec=args.codec, quality=args.quality,
                       checkpoint=args.checkpoint, force=args.force, inputs=input_files(args), shift_search=search)
    print(f"{res.path}: {res.width}x{res.height}, {res.file_bytes} bytes, {res.bpp:.4f} bpp (bitstream), "
          f"{res.file_bpp:.4f} bpp (file)")
    if res.shift_search is not None:
        s = res.shift_search
        steps = f"{s['steps']} steps" + (" (gave up: its answer was not changing)" if s.get("gave_up") else "")
        print(f"per-photo shift against {args.shift_for}: {steps}; its margin on the encrypted version "
              f"{s['margin_before']:.2f} -> {s['margin_after']:.2f} (below 0: its answer changed); "
              f"{s['drop_db']:.2f} dB under the base decode")
        if s["capped"]:
            print(f"psic: warning: the budget ({s['budget_db']:.2f} dB) is out of reach on this photo: the change is "
                  "at its largest strength", file=sys.stderr)
    return 0

