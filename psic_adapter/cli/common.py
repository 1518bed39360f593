"""What several commands share: the base-codec and key arguments, reading the key, the files a command reads.

Assembling the parts is :mod:`psic_adapter.workflows`'s job."""

from __future__ import annotations

import argparse
from typing import Optional


def add_codec_args(p: argparse.ArgumentParser, device: bool = False) -> None:
    g = p.add_argument_group("base codec")
    g.add_argument("--codec", help="CompressAI registry name, e.g. bmshj2018-hyperprior (optional with "
                                   "--checkpoint shipped, or with --adapter: the codec the adapter fits)")
    g.add_argument("--quality", type=int, help="zoo quality level (sets N/M)")
    g.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="codec weights: 'shipped' (the pretrained codec that comes with psic-adapter, offline), "
                        "safetensors shard(s), a folder of shards, or a .pth; without it the CompressAI zoo's "
                        "weights are downloaded")
    if device:  # compress/decompress stay on the CPU: CompressAI's entropy coder is not reproducible on GPUs
        g.add_argument("--device", default="auto", help="device for the networks: auto (CUDA when present), cpu, cuda")


def add_key_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="F", help="file holding the owner's key (see `psic keygen`)")
    g.add_argument("--key-env", metavar="VAR", help="environment variable holding the owner's key")


def add_shift_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("per-photo shift (the owner's, at compression; a 'spatial' adapter)")
    g.add_argument("--shift-for", metavar="TARGET",
                   help="choose this photo's shift of the adapter's branches against the classifier TARGET "
                        "(efficientnet-lite0, -lite1, -lite2, timm:MODEL, A+B): stronger protection against it, "
                        "seconds to a minute a photo on a CPU; stored in the file (format 3), the codec's bytes "
                        "unchanged")
    g.add_argument("--shift-steps", type=int, metavar="N", help="the search's steps at most (default 40)")
    g.add_argument("--shift-db", type=float, metavar="DB",
                   help="each photo's encrypted version DB under the base decode, at most (default: the adapter's "
                        "own cost on that photo)")
    g.add_argument("--shift-target-weights", metavar="F", help="weights for --shift-for's target")
    g.add_argument("--shift-amp", choices=("off", "bf16", "auto"),
                   help="the search's steps in bf16 autocast: off (fp32, the default), bf16, auto (CUDA, and CPUs with "
                        "bf16 units): about 2x faster a step on such CPUs, and one photo of 30 fewer flipped in our "
                        "measurement; the strength and the decode stay fp32")
    g.add_argument("--shift-give-up", metavar="M",
                   help="after 10 steps, stop searching a photo whose margin, at its recent pace, would still be "
                        "above M after the last step (default 0.5: the search's time goes mostly to photos that never "
                        "change their answer); off: every photo takes all the steps")


SHIFT_FLAGS = ("shift_steps", "shift_db", "shift_target_weights", "shift_amp", "shift_give_up")


def _give_up(text: str) -> Optional[float]:
    from ..errors import ConfigError

    if text == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--shift-give-up takes a margin or 'off', not {text!r}") from None


def check_shift_args(args):
    """The per-photo shift's flags, checked before anything loads: the :class:`ShiftSearch` they ask for, without
    its target (None without --shift-for; the other flags without it are an error, not ignored)."""
    from ..training.shift_search import ShiftSearch, check_search_target
    from ..errors import ConfigError

    if getattr(args, "shift_for", None) is None:
        given = [f"--{f.replace('_', '-')}" for f in SHIFT_FLAGS if getattr(args, f, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need(s) --shift-for TARGET")
        return None
    check_search_target(args.shift_for)
    settings = {k: v for k, v in (("steps", args.shift_steps), ("amp", args.shift_amp)) if v is not None}
    if args.shift_give_up is not None:
        settings["give_up"] = _give_up(args.shift_give_up)  # "off": None, never
    return ShiftSearch(None, budget_db=args.shift_db, **settings)  # what is not given: ShiftSearch's defaults


def shift_search_of(args, search=None):
    """:func:`check_shift_args`'s search (or ``search``, already checked) with its target loaded (None without
    --shift-for)."""
    from ..targets import build_target

    search = search if search is not None else check_shift_args(args)
    if search is not None:
        search.target = build_target(args.shift_for, weights=args.shift_target_weights, device="cpu").eval()
    return search


def read_key(args) -> Optional[bytes]:
    from ..adapter.keys import read_key_env, read_key_file

    if getattr(args, "key_file", None):
        return read_key_file(args.key_file)
    if getattr(args, "key_env", None):
        return read_key_env(args.key_env)
    return None


def input_files(args, *files) -> list:
    """Every file the command reads: ``files`` (its INPUT), the key files, the checkpoint (a folder's shards),
    the adapter's files. An output is never one of them, ``--force`` or not (:func:`psic_adapter.fileio.check_output`)."""
    from pathlib import Path

    from ..adapter.config import CONFIG_NAME, WEIGHTS_NAME
    from ..workflows import wants_shipped

    paths = [Path(f) for f in files if f is not None]
    paths += [Path(getattr(args, k)) for k in ("key_file", "new_key_file") if getattr(args, k, None)]
    checkpoint = getattr(args, "checkpoint", None)
    for item in ([] if wants_shipped(checkpoint) else checkpoint or []):
        p = Path(item)
        paths += sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    adapter = getattr(args, "adapter", None)
    if isinstance(adapter, str) and Path(adapter).is_dir():
        a = Path(adapter)
        paths += [a / CONFIG_NAME, a / WEIGHTS_NAME, a.parent / "codec.safetensors"]
    return paths
