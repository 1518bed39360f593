"""Finding the decoder blocks of a codec's synthesis transform and hooking them.

Every CompressAI image model decodes as ``x_hat = g_s(y_hat)`` in both
``forward`` and ``decompress``. PSIC adds a condition-dependent bias after each
decoder block of ``g_s``. This is done with forward hooks, so that no module of
the codec is renamed or replaced: the codec's ``state_dict`` keys and tensors
stay as they were and zoo checkpoints keep loading.

Default injection points, by type, among the direct children of ``g_s`` (the
last child, the output layer, is never a target):

===========================================  ===========================================
architecture                                 decoder blocks
===========================================  ===========================================
bmshj2018-*, mbt2018(-mean), -vbr variants   inverse ``GDN`` layers (3)
bmshj2018-factorized-relu                    ``ReLU`` layers (3)
cheng2020-anchor / -checkerboard             ``ResidualBlock`` + ``ResidualBlockUpsample`` (7)
cheng2020-attn                               the above + ``AttentionBlock`` (9)
elic2022-official / -chandelier              ``ResidualBottleneckBlock`` + ``AttentionBlock`` (11)
===========================================  ===========================================

A codec of one's own names its targets with ``PSICConfig(target_modules=[...])``.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..codec.build import latent_channels, synthesis_transform
from ..errors import ConfigError

#: class names of CompressAI's decoder blocks (matched by name so that subclasses
#: and re-implementations of the same blocks are found too).
DECODER_BLOCK_TYPES = (
    "GDN",
    "ResidualBlock",
    "ResidualBlockUpsample",
    "ResidualBottleneckBlock",
    "AttentionBlock",
)
#: used when a synthesis transform has none of the blocks above (e.g. ReLU decoders)
ACTIVATION_TYPES = ("ReLU", "LeakyReLU", "GELU", "SiLU", "PReLU")


def _is_decoder_block(module: nn.Module, types: Sequence[str]) -> bool:
    name = type(module).__name__
    if name == "GDN":  # only the inverse GDN belongs to a decoder
        return bool(getattr(module, "inverse", True))
    return name in types


def default_injection_points(codec: nn.Module) -> List[str]:
    """The decoder blocks among ``g_s``'s direct children, by type (see module doc)."""
    g_s = synthesis_transform(codec)
    children = list(g_s.named_children())[:-1]  # the last child produces the image
    for types in (DECODER_BLOCK_TYPES, ACTIVATION_TYPES):
        found = [f"g_s.{n}" for n, m in children if _is_decoder_block(m, types)]
        if found:
            return found
    kinds = ", ".join(sorted({type(m).__name__ for _, m in children})) or "none"
    raise ConfigError(
        f"no decoder blocks found in {type(codec).__name__}.g_s (its children are: {kinds}); "
        "name them with PSICConfig(target_modules=[...])"
    )


def resolve_injection_points(codec: nn.Module, target_modules: Optional[Sequence[str]] = None) -> List[str]:
    """Module names to hook, in the order ``g_s`` runs them.

    Each entry of ``target_modules`` may be an exact module name (``"g_s.3"``), a
    name suffix (``"3"`` or ``"g_s.3"`` both match ``g_s.3``), a class name
    (``"GDN"``), or a regular expression matched against the full name.
    """
    if target_modules is None:
        return default_injection_points(codec)
    g_s = synthesis_transform(codec)
    modules = {f"g_s.{n}" if n else "g_s": m for n, m in g_s.named_modules()}
    order = list(modules)
    chosen: Dict[str, None] = {}
    for spec in target_modules:
        hits = [
            name
            for name, mod in modules.items()
            if name == spec
            or name.endswith("." + spec)
            or type(mod).__name__ == spec
            or _regex_fullmatch(spec, name)
        ]
        hits = [h for h in hits if h != "g_s"]
        if not hits:
            blocks = ", ".join(default_injection_points_or_none(codec)) or "none found by type"
            raise ConfigError(f"target module {spec!r} matches nothing in g_s (decoder blocks: {blocks})")
        for h in hits:
            chosen[h] = None
    return sorted(chosen, key=order.index)


def default_injection_points_or_none(codec: nn.Module) -> List[str]:
    try:
        return default_injection_points(codec)
    except ConfigError:
        return []


def _regex_fullmatch(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def get_submodule(codec: nn.Module, name: str) -> nn.Module:
    try:
        return codec.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{type(codec).__name__} has no module {name!r}") from None


@torch.no_grad()
def probe_channels(codec: nn.Module, names: Sequence[str]) -> List[int]:
    """Output channels of each named module: a dry run of ``g_s`` on a small dummy latent."""
    g_s = synthesis_transform(codec)
    found: Dict[str, int] = {}
    handles = []
    for name in names:
        mod = get_submodule(codec, name)

        def hook(_m, _inp, out, _name=name):
            if not torch.is_tensor(out) or out.dim() != 4:
                raise ConfigError(f"{_name} does not output a feature map (got {type(out).__name__})")
            found[_name] = int(out.shape[1])

        handles.append(mod.register_forward_hook(hook))
    param = next(codec.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = g_s.training
    try:
        g_s.eval()
        g_s(torch.zeros(1, latent_channels(codec), 4, 4, device=device, dtype=dtype))
    finally:
        g_s.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"module(s) {', '.join(missing)} are not run by g_s; they cannot carry a CLTG bias")
    return [found[n] for n in names]


def _owns_output(out, inputs) -> bool:
    """False when ``out`` shares memory with a tensor input (``nn.Identity``, in-place activations)."""
    if not torch.is_tensor(out):
        return False
    ptr = out.untyped_storage().data_ptr()
    return not any(torch.is_tensor(t) and t.untyped_storage().data_ptr() == ptr for t in inputs)


def attach_hooks(codec: nn.Module, names: Sequence[str], fn: Callable[[int, torch.Tensor, bool], Optional[torch.Tensor]]):
    """Register ``fn(index, output, owned)`` as a forward hook on each named module.

    ``owned`` is True when the output does not share memory with the module's
    inputs (so that it may be changed in place). ``fn`` returns the new output,
    or ``None`` to leave it unchanged. Returns the hook handles
    (``handle.remove()`` detaches them).
    """
    handles = []
    for i, name in enumerate(names):
        mod = get_submodule(codec, name)
        hook = lambda _m, inp, out, _i=i: fn(_i, out, _owns_output(out, inp))  # noqa: E731
        hook._psic_hook = getattr(fn, "_psic_hook", False)  # a mark ``fn`` carries carries over (PSICModel's)
        handles.append(mod.register_forward_hook(hook))
    return handles
