"""BAvAFT: a backdoor in a learned codec's *encoder*, keyed by an adaptive DCT-domain trigger.

The baseline the PSIC paper compares with (its sections 1, 4.1, 4.2): Yu, Wang,
Yang, Lu, Tan, Kot, "Backdoor Attacks against Deep Image Compression via
Adaptive Frequency Trigger", CVPR 2023 (arXiv 2302.14677). The authors
published no code; this is an independent re-implementation from the paper's
description, adapted to PSIC's setting (mislead a machine-vision target).

The method
----------
* **Trigger injection network** (:class:`TriggerNet`). The input image is taken
  to YCbCr (as JPEG does) and cut into 8x8 blocks; every block gets an
  orthonormal DCT-II (:func:`block_dct`, matrices in torch, differentiable), so
  the image becomes ``3 x 64`` frequency channels at 1/8 resolution. A small
  conv net reads them and predicts, per block, a trigger coefficient for every
  frequency. An **adaptive frequency selection** keeps, per image and colour
  channel, the ``top_k`` frequencies (default 16, as the paper's top-K) of a
  candidate band (default: zig-zag diagonals ``1 <= u+v <= 9``: no DC, whose
  change is a visible brightness shift, and none of the highest frequencies,
  which the codec throws away) by a score = a learnable per-frequency logit
  (the global frequency mask) + an image-dependent logit (pooled features ->
  linear). The hard top-K mask is used forward; its gradient reaches the
  scores through a sigmoid (straight-through). The selected coefficients go
  back through the inverse DCT and YCbCr -> RGB, and are bounded in pixel
  space by ``amplitude * tanh(t / amplitude)`` (``|t| < amplitude``, default
  8/255). Poisoned input: ``clamp(x + t, 0, 1)``.
* **Encoder-only fine-tuning** (:class:`BAvAFT`). The codec is a copy of the
  base codec. Its analysis transform ``g_a`` and (default) its hyper-analysis
  ``h_a`` train; everything the *receiver* runs stays frozen and bit-identical:
  ``g_s``, ``h_s``, the entropy bottleneck (its factorised prior, quantiles and
  CDF tables), the Gaussian conditional's scale table, context models. ``h_a``
  runs only at the sender (its output ``z`` is coded with the frozen prior), so
  training it changes no decoder: a BAvAFT bitstream decodes with the
  *unmodified* base codec. ``train_hyper_encoder=False`` trains ``g_a`` alone.
  The entropy models are not touched because their tables are shared with the
  decoder (changing them would change the decoder) and ``update()`` is never
  called: the base codec's tables are used as they are.
* **Two modes, two encodings**: ``compress(x)`` is the clean mode (fine-tuned
  encoder on ``x``), ``compress(x, poisoned=True)`` the backdoor (trigger
  first). Each needs its own encoding and its own bitstream: the weakness the
  PSIC paper points out (one PSIC bitstream decodes to both versions).
* **Training** (:func:`train_bavaft`): loss = clean RD
  (``bpp_clean + lmbda 255^2 MSE(x_hat_clean, x)``) + ``w_rate * bpp_poisoned`` +
  ``w_attack * attack(x_hat_poisoned)`` + ``w_dist * lmbda 255^2
  MSE(x_hat_poisoned, x)``, the attack being one of the project's encryption
  objectives ("uaeo", "margin", "naive", "authors"; computed exactly as
  :class:`~psic_adapter.training.Trainer` computes them, ensembles included).
  The weights follow a *dynamic balance* (:class:`DynamicBalance`).

The dynamic balance (the rule used here)
----------------------------------------
The paper proposes "a simple dynamic loss ... to balance the influence of
different loss terms adaptively"; its exact formula could not be read from the
sources at hand, so this rule is ours. Every term's magnitude is tracked by an
exponential moving average of its absolute value (``m_k <- beta m_k + (1 -
beta) |L_k|``, started at the first value; non-finite values are skipped), and
each non-anchor term is rescaled to the anchor's (the clean RD loss, weight 1):

    w_k = prior_k * clip(m_anchor / max(m_k, floor * m_k(0)), w_min, w_max)

so each term contributes about ``prior_k`` times the clean RD loss. The weights
are Python floats (no gradient flows through them), the floor (a fraction of
the term's first magnitude, default 0.1) bounds the growth of a term that goes
to zero (a satisfied margin loss) at ``1/floor`` times its first weight, the
absolute value keeps a term that changes sign (the naive cosine) from flipping
or exploding its weight, and the clip bounds everything. This avoids the
blow-up of the PSIC authors' stage-2 weights (``1/loss``, not detached, with a
cosine term that can reach zero or go negative). ``balance="fixed"`` uses the
priors as constant weights.

What differs from the paper
---------------------------
* The paper attacks bit-rate, PSNR, face recognition and segmentation, with
  several triggers in one model; here there is one trigger and the attack is
  PSIC's (mislead a classifier or CLIP: the project's encryption objectives),
  as the PSIC paper's comparison needs.
* The network's exact layers, the candidate band and the bound are ours (the
  paper's figure gives top-K = 16 and 64 "middle" frequencies); the amplitude
  bound is a soft clip in pixel space.
* The PSIC paper trains BAvAFT with the backbone from scratch; here the base
  codec is pretrained and only the encoder is fine-tuned, which is the paper's
  own setting ("simple modification of encoder parameters").
* Quantisation during training is CompressAI's additive noise (the codec's
  ``forward`` in train mode); evaluation uses real entropy coding.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from ...codec.padding import PAD_MULTIPLE, crop_to, pad_to_multiple
from ...errors import ConfigError, FingerprintMismatchError, OverwriteError, PSICError
from .trigger import BAvAFTConfig, TriggerNet
from ...types import PathLike

FORMAT = "psic-bavaft/1"
CONFIG_NAME = "bavaft_config.json"
WEIGHTS_NAME = "bavaft.safetensors"
#: encoder-side modules of CompressAI codecs (the receiver never runs them)
ENCODER_MODULES = ("g_a", "h_a")

def _encoder_names(codec: nn.Module, hyper: bool) -> List[str]:
    if not isinstance(getattr(codec, "g_a", None), nn.Module):
        raise ConfigError(f"{type(codec).__name__} has no analysis transform g_a: not a CompressAI image codec")
    names = ["g_a"]
    if hyper and isinstance(getattr(codec, "h_a", None), nn.Module):
        names.append("h_a")
    return names


class BAvAFT(nn.Module):
    """A CompressAI codec with a BAvAFT backdoor: trigger network + fine-tuned encoder.

    Args:
        codec: the base codec (ready to code: eval mode, entropy tables). It is
            copied, never modified; the copy's encoder is what fine-tunes.
        config: :class:`BAvAFTConfig`.

    Modes: ``compress(x)`` (clean: the fine-tuned encoder on ``x``) and
    ``compress(x, poisoned=True)`` (the backdoor: trigger, then the encoder),
    two encodings and two bitstreams; ``decompress`` is the base codec's (its
    decoder is frozen), so either bitstream decodes with the unmodified codec.
    Before training the encoder is the base encoder: clean mode equals the base
    codec bit for bit.
    """

    def __init__(self, codec: nn.Module, config: Optional[BAvAFTConfig] = None):
        super().__init__()
        from ...codec import architecture_name, fingerprint

        self.config = config or BAvAFTConfig()
        self.architecture = architecture_name(codec)
        self.base_fingerprint = fingerprint(codec)
        self.codec = copy.deepcopy(codec)
        self.trigger = TriggerNet(self.config)
        self.encoder_modules = _encoder_names(self.codec, self.config.train_hyper_encoder)
        self.codec.requires_grad_(False)
        for name in self.encoder_modules:
            getattr(self.codec, name).requires_grad_(True)
        # the base encoder, to rebuild the unmodified codec (base_codec()); not a state_dict entry
        self._base_encoder = {k: v.detach().clone() for k, v in self.encoder_state().items()}
        # move the trigger to the codec's device
        try:
            dev = next(self.codec.parameters()).device
            self.trigger.to(dev)
        except StopIteration:
            pass

    # -------------------------------------------------------------- parameters
    def encoder_state(self) -> Dict[str, Tensor]:
        """State of the fine-tuned encoder modules, keys ``"g_a.0.weight"`` ..."""
        out = {}
        for name in self.encoder_modules:
            for k, v in getattr(self.codec, name).state_dict().items():
                out[f"{name}.{k}"] = v
        return out

    def encoder_parameters(self) -> List[nn.Parameter]:
        return [p for name in self.encoder_modules for p in getattr(self.codec, name).parameters()]

    def trigger_parameters(self) -> List[nn.Parameter]:
        return list(self.trigger.parameters())

    def bavaft_state_dict(self) -> Dict[str, Tensor]:
        """What BAvAFT adds to the base codec: ``trigger.*`` and ``encoder.<g_a|h_a>.*``."""
        state = {f"trigger.{k}": v.detach() for k, v in self.trigger.state_dict().items()}
        state.update({f"encoder.{k}": v.detach() for k, v in self.encoder_state().items()})
        return state

    def load_bavaft_state_dict(self, state: Mapping[str, Tensor]) -> None:
        trig = {k[len("trigger."):]: v for k, v in state.items() if k.startswith("trigger.")}
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        unknown = [k for k in state if not k.startswith(("trigger.", "encoder."))]
        if unknown:
            raise PSICError(f"unexpected entries in a BAvAFT state: {unknown[:5]}")
        self.trigger.load_state_dict(trig)
        for name in self.encoder_modules:
            part = {k[len(name) + 1:]: v for k, v in enc.items() if k.startswith(name + ".")}
            getattr(self.codec, name).load_state_dict(part)
        extra = [k for k in enc if k.split(".", 1)[0] not in self.encoder_modules]
        if extra:
            raise PSICError(f"the state fine-tunes modules this model does not: {sorted({k.split('.')[0] for k in extra})}")

    def base_codec(self) -> nn.Module:
        """A copy of the unmodified base codec (this model's decoder and entropy
        models, with the original encoder weights)."""
        base = copy.deepcopy(self.codec)
        dev = next(base.parameters()).device
        for name in self.encoder_modules:
            part = {k[len(name) + 1:]: v.to(dev) for k, v in self._base_encoder.items() if k.startswith(name + ".")}
            getattr(base, name).load_state_dict(part)
        base.requires_grad_(False)
        return base.eval()

    # ------------------------------------------------------------------ modes
    def make_trigger(self, x: Tensor) -> Tensor:
        """The trigger pattern of ``x`` (``|t| < amplitude``)."""
        return self.trigger(x)

    def poison(self, x: Tensor) -> Tensor:
        """``clamp(x + trigger(x), 0, 1)``: the poisoned input."""
        return (x + self.trigger(x)).clamp(0.0, 1.0)

    def forward(self, x: Tensor, poisoned: bool = False) -> Dict[str, Any]:
        """The codec's (training) forward on ``x`` or on its poisoned version.

        Returns ``{"x_hat", "likelihoods", "x_in"}``: ``x_hat`` cropped to
        ``x``'s size, ``x_in`` what the encoder saw (before padding).
        """
        x_in = self.poison(x) if poisoned else x
        xp, size = pad_to_multiple(x_in, PAD_MULTIPLE)
        out = self.codec(xp)
        return {"x_hat": crop_to(out["x_hat"], size), "likelihoods": out["likelihoods"], "x_in": x_in}

    @torch.no_grad()
    def compress(self, x: Tensor, poisoned: bool = False) -> Dict[str, Any]:
        """The codec's ``compress`` of ``x`` (clean) or of ``x`` + trigger (poisoned).

        ``x`` is given as CompressAI wants it (sides multiples of 64); use
        :meth:`encode` for any size. Two modes, two separate encodings.
        """
        return self.codec.compress(self.poison(x) if poisoned else x)

    @torch.no_grad()
    def decompress(self, strings, shape) -> Dict[str, Any]:
        """The base codec's ``decompress`` (the decoder is frozen)."""
        return self.codec.decompress(strings, shape)

    @torch.no_grad()
    def encode(self, x: Tensor, poisoned: bool = False) -> Dict[str, Any]:
        """Any-size ``x`` [1, 3, H, W] -> ``{"strings", "shape", "size"}``: the trigger
        is made on ``x`` itself, then the input is padded to 64 and compressed."""
        x_in = self.poison(x) if poisoned else x
        xp, size = pad_to_multiple(x_in, PAD_MULTIPLE)
        out = self.codec.compress(xp)
        return {"strings": out["strings"], "shape": out["shape"], "size": size}

    @torch.no_grad()
    def decode(self, enc: Mapping[str, Any]) -> Tensor:
        """Decode :meth:`encode`'s output and crop it back."""
        return crop_to(self.decompress(enc["strings"], enc["shape"])["x_hat"], enc["size"])

    # ------------------------------------------------------------------- files
    def save_pretrained(self, directory: PathLike, training: Optional[Dict[str, Any]] = None,
                        force: bool = True) -> Path:
        """Write ``bavaft.safetensors`` (trigger + fine-tuned encoder) and ``bavaft_config.json``."""
        from safetensors.torch import save

        from ...fileio import atomic_write

        d = Path(directory)
        if (d / CONFIG_NAME).exists() and not force:
            raise OverwriteError(f"{d / CONFIG_NAME} exists (use force to overwrite)")
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.bavaft_state_dict().items()}
        atomic_write(d / WEIGHTS_NAME, save(state, metadata={"format": FORMAT}), force=True)
        meta = {
            "format": FORMAT,
            "method": "BAvAFT (Yu et al., CVPR 2023), re-implemented in psic_adapter.baselines.bavaft",
            "architecture": self.architecture,
            "base_fingerprint": self.base_fingerprint,
            "encoder_modules": list(self.encoder_modules),
            "config": self.config.to_dict(),
            "training": training or {},
        }
        atomic_write(d / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode(), force=True)
        return d

    @classmethod
    def from_pretrained(cls, codec: nn.Module, directory: PathLike, strict_fingerprint: bool = True) -> "BAvAFT":
        """A BAvAFT saved by :meth:`save_pretrained`, on the base ``codec`` it was trained from."""
        from safetensors.torch import load_file

        from ...codec import fingerprint

        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise PSICError(f"{d}: no {CONFIG_NAME} (not a BAvAFT folder)")
        meta = json.loads((d / CONFIG_NAME).read_text())
        if meta.get("format") != FORMAT:
            raise PSICError(f"{d / CONFIG_NAME}: unknown format {meta.get('format')!r}")
        if strict_fingerprint and meta.get("base_fingerprint") and fingerprint(codec) != meta["base_fingerprint"]:
            raise FingerprintMismatchError(
                f"{d} was trained from another base codec (weights {meta['base_fingerprint'][:12]}) "
                f"than the one given ({fingerprint(codec)[:12]}): pass the same checkpoint"
            )
        model = cls(codec, BAvAFTConfig.from_dict(meta["config"]))
        if list(model.encoder_modules) != list(meta.get("encoder_modules", model.encoder_modules)):
            raise PSICError(f"{d} fine-tuned {meta['encoder_modules']}, this codec offers {model.encoder_modules}")
        model.load_bavaft_state_dict(load_file(str(d / WEIGHTS_NAME)))
        model.training_info = meta.get("training", {})
        return model.eval()


def load_bavaft(codec: nn.Module, directory: PathLike) -> BAvAFT:
    """Shorthand for :meth:`BAvAFT.from_pretrained`."""
    return BAvAFT.from_pretrained(codec, directory)
