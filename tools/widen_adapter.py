"""Widen a fitted "spatial" adapter's branches, keeping what it decodes (issue 15, runs WT and XC); or narrow them.

The spatial branch at each injection point is ``conv3x3(relu(conv1x1(f)))`` with
``spatial_rank`` hidden channels (32 by default). This tool gives it ``--rank`` hidden
channels without changing the adapter's function: the old channels keep their weights,
the new ``conv1x1`` rows get ``nn.Conv2d``'s default initialisation (seeded), and the
new input columns of the ``conv3x3`` are zero, so the widened adapter decodes every
image exactly as the original (the new channels start with a gradient, not an effect).
Everything else in the folder's config (salt, key check, strength, training record)
is kept (so is its description: edit it if the widened adapter is to be published); go on
fitting it with ``psic train --adapter OUT``. The same decode is not the same adapter: its
fingerprint hashes the tensors, so ``.psic`` files made for the original name another adapter.

    python tools/widen_adapter.py runs/GS0/adapter-cal runs/W128/adapter-start --rank 128 --seed 0

``--context K`` gives each branch a global context instead (or as well): an MLP of ``K`` hidden
units from each channel's mean and spread over the image (``spatial_context``, see
``psic_adapter.adapter.cltg.SpatialBranch``); its first layer
gets ``nn.Linear``'s default initialisation (seeded), its last starts at zero, so again the
decode is unchanged (runs XC: does a change that knows the whole image flip more of them?):

    python tools/widen_adapter.py runs/GS0/adapter-cal runs/XC/adapter-start --context 64 --seed 0

A ``--rank`` below the branches' width narrows them instead, the other way round and not
function-preserving: each branch keeps the ``--rank`` hidden channels that carry the most of
its change by a weight-based score (the norm of the channel's ``conv1x1`` row and bias times
the norm of its ``conv3x3`` column), in their order, and drops the rest, so the decode changes
and the narrowed adapter is a start to fit on, not an adapter to publish (runs NR: does a
branch of 8 channels, a quarter of the decode cost, hold the effect once fitted?):

    python tools/widen_adapter.py runs/GS0/adapter-cal runs/NR/adapter-start --rank 8

A question the tool answers is whether the recipe, which fits its own training photos
no better than unseen ones, is short of capacity (docs/results.md, "A wider spatial
branch"). It is a tool for that experiment, not library API.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def branches(state):
    """The name prefix of each spatial branch in an adapter's tensors (``...branches.K.``), in order."""
    return [k[: -len("reduce.weight")] for k in sorted(state) if k.endswith(".reduce.weight")]


def widen(state, old_rank: int, rank: int, seed: int):
    """``state`` (an adapter's tensors) with every spatial branch at ``rank`` hidden channels, same function."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for prefix in branches(state):
        name = prefix + "reduce.weight"
        w, b, e = state[name], state[prefix + "reduce.bias"], state[prefix + "expand.weight"]
        bound = 1.0 / (w.shape[1] ** 0.5)  # nn.Conv2d's default on a 1x1 kernel and its bias
        new_w = torch.empty(rank, *w.shape[1:]).uniform_(-bound, bound, generator=gen).to(w.dtype)
        new_b = torch.empty(rank).uniform_(-bound, bound, generator=gen).to(b.dtype)
        new_w[:old_rank], new_b[:old_rank] = w, b
        new_e = torch.zeros(e.shape[0], rank, *e.shape[2:], dtype=e.dtype)
        new_e[:, :old_rank] = e  # the new channels feed nothing yet
        out[name], out[prefix + "reduce.bias"], out[prefix + "expand.weight"] = (
            new_w.contiguous(), new_b.contiguous(), new_e.contiguous())
        for k in [k for k in state if k.startswith(prefix + "context.2.")]:  # a context shifts no new channel yet
            c = state[k]
            grown = torch.zeros(rank, *c.shape[1:], dtype=c.dtype)
            grown[:old_rank] = c
            out[k] = grown.contiguous()
    return out


def narrow(state, rank: int):
    """``state`` with every spatial branch cut to the ``rank`` hidden channels of largest weight-based score."""
    out = dict(state)
    for prefix in branches(state):
        name = prefix + "reduce.weight"
        w, b, e = state[name], state[prefix + "reduce.bias"], state[prefix + "expand.weight"]
        score = (w.flatten(1).float().square().sum(1) + b.float().square()).sqrt() * e.float().transpose(0, 1).flatten(1).norm(dim=1)
        keep = score.topk(rank).indices.sort().values
        out[name], out[prefix + "reduce.bias"] = w[keep].contiguous(), b[keep].contiguous()
        out[prefix + "expand.weight"] = e[:, keep].contiguous()
        for k in [k for k in state if k.startswith(prefix + "context.2.")]:  # a context shifts the kept units only
            out[k] = state[k][keep].contiguous()
    return out


def add_context(state, context: int, seed: int):
    """``state`` with a zero-output global-context MLP of ``context`` hidden units on every spatial branch."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for prefix in branches(state):
        w = state[prefix + "reduce.weight"]  # [rank, C, 1, 1]
        rank, channels = w.shape[0], w.shape[1]
        bound = 1.0 / ((2 * channels) ** 0.5)  # nn.Linear's default on [means, deviations], weight and bias
        out[prefix + "context.0.weight"] = torch.empty(context, 2 * channels).uniform_(-bound, bound, generator=gen).to(w.dtype)
        out[prefix + "context.0.bias"] = torch.empty(context).uniform_(-bound, bound, generator=gen).to(w.dtype)
        out[prefix + "context.2.weight"] = torch.zeros(rank, context, dtype=w.dtype)  # no effect yet
        out[prefix + "context.2.bias"] = torch.zeros(rank, dtype=w.dtype)
    return out


def main(argv=None) -> int:
    from psic_adapter.adapter.files import check_adapter_files, tensors_mismatch, write_adapter_files
    from psic_adapter.errors import PSICError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("adapter", help="a fitted adapter folder with modulation 'spatial'")
    p.add_argument("out", help="the widened adapter's folder (new)")
    p.add_argument("--rank", type=int, help="hidden channels of the widened branches")
    p.add_argument("--context", type=int, help="hidden units of a global-context MLP to add to every branch")
    p.add_argument("--seed", type=int, default=0, help="seed of the new channels' initialisation")
    args = p.parse_args(argv)
    try:
        config, state = check_adapter_files(args.adapter)
        if config.modulation != "spatial":
            raise PSICError(f"{args.adapter}: modulation {config.modulation!r} has no spatial branch to widen")
        if args.rank is None and args.context is None:
            raise PSICError("give --rank, --context or both: there is nothing to widen")
        old = config.resolved_spatial_rank
        rank = old if args.rank is None else args.rank
        if args.rank is not None and args.rank == old and args.context is None:
            raise PSICError(f"--rank {args.rank}: the branches already have {old} hidden channels")
        if args.context is not None and config.spatial_context is not None:
            raise PSICError(f"{args.adapter}: the branches already have a global context "
                            f"({config.spatial_context} hidden units)")
        changes = {"spatial_rank": rank} if args.rank is not None else {}
        if args.context is not None:
            changes["spatial_context"] = args.context
        wide = config.replace(**changes)  # validates the rank and the context
        out = Path(args.out)
        if out.exists() or out.is_symlink():
            raise PSICError(f"{out} exists: choose a new folder")
        if rank == old:
            tensors = dict(state)
        else:
            tensors = widen(state, old, rank, args.seed) if rank > old else narrow(state, rank)
        if args.context is not None:
            tensors = add_context(tensors, args.context, args.seed)
        mismatch = tensors_mismatch(wide, tensors)
        if mismatch:  # what load_adapter would refuse: never write it
            raise PSICError(f"{args.adapter}: the reshaped tensors do not fit the new config: {mismatch}")
        try:  # both files in a new sibling folder, then one rename: no half-written adapter is ever left
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                write_adapter_files(tmp, wide, tensors)  # as save_pretrained: its fingerprint in the metadata
                tmp.rename(out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        except OSError as exc:
            raise PSICError(f"cannot write {out}: {exc.strerror or exc}") from None
    except PSICError as exc:
        print(f"widen_adapter: error: {exc}", file=sys.stderr)
        return 2
    what = [f"{old} -> {rank} hidden channels"] if rank != old else []
    what += [f"a global context of {args.context} hidden units"] if args.context is not None else []
    same = rank >= old  # widening and adding a context keep the decode; narrowing does not
    print(f"{out}: {' and '.join(what)} per spatial branch, "
          + ("same decode" if same else "a DIFFERENT decode (narrowed): fit it on with psic train --adapter"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
