"""``psic``: the command line. Thin: parse, call the library, print.

User errors (bad files, wrong adapters, missing images) print one line,
``psic: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional


def _codec_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("base codec")
    g.add_argument("--codec", required=required, help="CompressAI registry name, e.g. bmshj2018-hyperprior")
    g.add_argument("--quality", type=int, help="zoo quality level (sets N/M)")
    g.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="codec weights: safetensors shard(s), a folder of shards, or a .pth; "
                        "without it the CompressAI zoo weights are downloaded")
    g.add_argument("--device", default="cpu", help="device for the networks (entropy coding stays on the CPU)")


def _key_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="F", help="file holding the owner's key (see `psic keygen`)")
    g.add_argument("--key-env", metavar="VAR", help="environment variable holding the owner's key")


def _read_key(args) -> Optional[bytes]:
    from .condition import read_key_env, read_key_file

    if getattr(args, "key_file", None):
        return read_key_file(args.key_file)
    if getattr(args, "key_env", None):
        return read_key_env(args.key_env)
    return None


def _load_codec(name: str, quality, checkpoint, device: str = "cpu"):
    from .codecs import load_codec

    return load_codec(name, quality=quality, checkpoint=checkpoint, pretrained=checkpoint is None, device=device)


def _with_adapter(codec, adapter: Optional[str], key=None, trainable: bool = False):
    if not adapter:
        return codec
    from .adapter import load_adapter

    return load_adapter(codec, adapter, key=key, is_trainable=trainable)


# ---------------------------------------------------------------- commands
def cmd_compress(args) -> int:
    from .coding import encode_file

    codec = _load_codec(args.codec, args.quality, args.checkpoint)
    model = _with_adapter(codec, args.adapter)
    res = encode_file(args.input, args.output, model, codec_name=args.codec, quality=args.quality, force=args.force)
    print(f"{res.path}: {res.width}x{res.height}, {res.file_bytes} bytes, {res.bpp:.4f} bpp (bitstream), "
          f"{res.file_bpp:.4f} bpp (file)")
    return 0


def cmd_decompress(args) -> int:
    from . import container
    from .coding import decode_file

    _, header, _ = container.read(args.input)
    codec = _load_codec(header.codec, header.quality, args.checkpoint)
    model = _with_adapter(codec, args.adapter)
    key = _read_key(args)
    res = decode_file(args.input, args.output, model, key=key, plain=args.plain, force=args.force)
    if key is not None and res["key_matched"] is False:
        print("psic: warning: the key does not match this adapter; wrote the encrypted version", file=sys.stderr)
    print(f"{res['path']}: {res['version']} version, {header.width}x{header.height}")
    return 0


def cmd_keygen(args) -> int:
    from .condition import generate_key
    from .errors import OverwriteError

    path = Path(args.output)
    if path.exists() and not args.force:
        raise OverwriteError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_key() + "\n")
    os.chmod(path, 0o600)
    print(f"{path}: a new 256-bit key (readable by you only). Keep it: without it the full version is lost.")
    return 0


def cmd_info(args) -> int:
    import json

    from . import container

    enc, header, alpha = container.read(args.input)
    from .eval.metrics import count_bytes

    d = dict(header.__dict__)
    d.pop("layout")
    d["bitstream_bytes"] = count_bytes(enc["strings"])
    d["bpp"] = round(8 * d["bitstream_bytes"] / (header.height * header.width), 5)
    print(json.dumps(d, indent=2))
    return 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="psic", description="Privacy-Shielded Image Compression adapters for CompressAI codecs.")
    parser.add_argument("--version", action="version", version=f"psic-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("compress", help="image -> .psic (the base codec's bitstream)")
    p.add_argument("input", help="PNG (8/16-bit, grey, RGB, RGBA) or JPEG")
    p.add_argument("output", help=".psic file to write")
    _codec_args(p, required=True)
    p.add_argument("--adapter", metavar="DIR", help="adapter the file is meant for (recorded; bitstream unchanged)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".psic -> image (encrypted by default, full with the owner's key)")
    p.add_argument("input")
    p.add_argument("output", help="image file to write (.png keeps 16-bit and alpha)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE", help="the base codec's weights (as for compress)")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder or hub id")
    _key_args(p)
    p.add_argument("--plain", action="store_true", help="decode with the base codec alone, no adapter")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("keygen", help="write a new random key file (mode 600)")
    p.add_argument("output")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("info", help="print a .psic file's header")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def _register_optional(module: str):
    """Commands that live beside their library module (train, eval, demo, push)."""

    def register(sub):
        import importlib

        importlib.import_module(f"psic_adapter.{module}").add_cli(sub)

    return register


_EXTRA_COMMANDS: List = []


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import PSICError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PSICError as exc:
        print(f"psic: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("psic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
