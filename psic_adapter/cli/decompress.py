"""``psic decompress``: .psic -> image (encrypted by default, full with the owner's key)."""

from __future__ import annotations

from .common import add_key_args, input_files, read_key, with_adapter


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


def codec_for_file(header, checkpoint, adapter=None):
    """The base codec a file was made with: with an adapter, the codec it fits (a codec.safetensors
    beside it, written where training changed the decoder, --checkpoint, or the shipped codec, the
    first whose fingerprint is the adapter's); else its --checkpoint;
    the shipped codec when it is the file's; else the zoo's (a download)."""
    from ..codec import SHIPPED_CODEC
    from .common import load_codec

    if adapter:
        from ..adapter import codec_for_adapter

        return codec_for_adapter(adapter, checkpoint)
    if not checkpoint and SHIPPED_CODEC["fingerprint"] and header.base_fingerprint == SHIPPED_CODEC["fingerprint"][:32]:
        checkpoint = ["shipped"]
    return load_codec(header.codec, header.quality, checkpoint)


def run(args) -> int:
    from ..bitstream import container
    from ..bitstream.coding import decode_file
    from ..fileio import check_output

    inputs = input_files(args, args.input)
    check_output(args.output, force=args.force, inputs=inputs)  # before the codec is loaded
    _, header, _ = container.read(args.input)
    codec = codec_for_file(header, args.checkpoint, args.adapter)  # with --plain too: the adapter's codec
    model = codec if args.plain else with_adapter(codec, args.adapter)
    key = read_key(args)
    res = decode_file(args.input, args.output, model, key=key, plain=args.plain, force=args.force, inputs=inputs,
                      allow_format_1=args.allow_format_1)
    print(f"{res['path']}: {res['version']} version, {header.width}x{header.height}")
    return 0
