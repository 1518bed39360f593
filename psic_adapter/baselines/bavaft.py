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
  :class:`~psic_adapter.train.Trainer` computes them, ensembles included).
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
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, FingerprintMismatchError, OverwriteError, PSICError
from ..eval.runner import EvalConfig, Evaluator, Sample, headline
from ..images import crop_to, pad_to_multiple
from ..coding import PAD_MULTIPLE
from ..objectives import OBJECTIVES, EncryptionObjective
from ..train import COMPRESSAI_LAMBDAS, TrainingLoop, _psnr

PathLike = Union[str, os.PathLike]

FORMAT = "psic-bavaft/1"
CONFIG_NAME = "bavaft_config.json"
WEIGHTS_NAME = "bavaft.safetensors"
CHECKPOINT_NAME = "bavaft_checkpoint.safetensors"
#: encoder-side modules of CompressAI codecs (the receiver never runs them)
ENCODER_MODULES = ("g_a", "h_a")
#: JPEG's full-range BT.601 RGB -> YCbCr matrix (offsets 0, 0.5, 0.5)
_RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


# =============================================================================== DCT
def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): ``coef = D @ block @ D.T``.

    ``D[k, i] = a_k cos(pi (2i + 1) k / (2n))`` with ``a_0 = sqrt(1/n)`` and
    ``a_k = sqrt(2/n)``; ``D @ D.T = I``, so the inverse is ``D.T @ coef @ D``.
    Computed in float64, then cast.
    """
    if n < 1:
        raise ConfigError(f"DCT size must be >= 1, not {n}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def block_dct(x: Tensor, block: int = 8, matrix: Optional[Tensor] = None) -> Tensor:
    """Blockwise 2-D DCT: ``[B, C, H, W]`` -> ``[B, C, block*block, H/block, W/block]``.

    Frequency ``(u, v)`` (vertical, horizontal) is channel ``u * block + v``.
    ``H`` and ``W`` must be multiples of ``block``. Differentiable.
    """
    b = block
    n, c, h, w = x.shape
    if h % b or w % b:
        raise ConfigError(f"block_dct needs H, W multiples of {b}, got {h}x{w}")
    d = dct_matrix(b, x.dtype, x.device) if matrix is None else matrix.to(x.dtype)
    blocks = x.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 2, 4, 3, 5)  # n c Hb Wb b b
    coef = d @ blocks @ d.t()
    return coef.reshape(n, c, h // b, w // b, b * b).permute(0, 1, 4, 2, 3)


def block_idct(coef: Tensor, block: int = 8, matrix: Optional[Tensor] = None) -> Tensor:
    """Inverse of :func:`block_dct`: ``[B, C, block*block, Hb, Wb]`` -> ``[B, C, Hb*block, Wb*block]``."""
    b = block
    n, c, f, hb, wb = coef.shape
    if f != b * b:
        raise ConfigError(f"block_idct expects {b * b} frequency channels, got {f}")
    d = dct_matrix(b, coef.dtype, coef.device) if matrix is None else matrix.to(coef.dtype)
    blocks = coef.permute(0, 1, 3, 4, 2).reshape(n, c, hb, wb, b, b)
    pix = d.t() @ blocks @ d
    return pix.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * b, wb * b)


# ====================================================================== the trigger
@dataclass
class BAvAFTConfig:
    """Architecture of the trigger and what of the codec trains.

    Args:
        block: DCT block size (8, as JPEG).
        hidden: width of the trigger network.
        top_k: frequencies kept per image and colour channel (paper: K = 16).
        band: candidate frequencies, as the range of ``u + v`` (inclusive).
        amplitude: bound of the trigger in pixels (images in [0, 1]).
        coef_gain: scale of the predicted coefficients relative to ``amplitude``
            (with 16 frequencies of unit size the pixel trigger has a standard
            deviation of about 0.5, so 2 makes it about ``amplitude``).
        color_space: "ycbcr" (JPEG's) or "rgb": where the DCT is taken.
        train_hyper_encoder: fine-tune ``h_a`` as well as ``g_a``.
    """

    block: int = 8
    hidden: int = 64
    top_k: int = 16
    band: Tuple[int, int] = (1, 9)
    amplitude: float = 8.0 / 255.0
    coef_gain: float = 2.0
    color_space: str = "ycbcr"
    train_hyper_encoder: bool = True

    def __post_init__(self):
        self.band = tuple(int(b) for b in self.band)
        if len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1]:
            raise ConfigError(f"band must be (lo, hi) with 0 <= lo <= hi, not {self.band}")
        if self.block < 2 or self.hidden < 1:
            raise ConfigError("block must be >= 2 and hidden >= 1")
        n_cand = len(candidate_frequencies(self.block, self.band))
        if not 1 <= self.top_k <= n_cand:
            raise ConfigError(f"top_k must be in [1, {n_cand}] (the band {self.band} has {n_cand} frequencies)")
        if not self.amplitude > 0:
            raise ConfigError("amplitude must be > 0")
        if self.color_space not in ("ycbcr", "rgb"):
            raise ConfigError(f"color_space must be 'ycbcr' or 'rgb', not {self.color_space!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["band"] = list(self.band)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BAvAFTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "band" else v) for k, v in d.items() if k in names})


def candidate_frequencies(block: int, band: Tuple[int, int]) -> List[int]:
    """Channel indices ``u * block + v`` of the frequencies with ``band[0] <= u + v <= band[1]``."""
    return [u * block + v for u in range(block) for v in range(block) if band[0] <= u + v <= band[1]]


class TriggerNet(nn.Module):
    """The image-adaptive trigger in the DCT domain (see the module docstring).

    ``forward(x)`` returns the trigger ``t`` (same shape as ``x``, ``|t| <
    amplitude``); :meth:`coefficients` the masked DCT coefficients and the mask.
    """

    def __init__(self, config: Optional[BAvAFTConfig] = None):
        super().__init__()
        self.config = cfg = config or BAvAFTConfig()
        b, h = cfg.block, cfg.hidden
        self.nfreq = b * b
        ch = 3 * self.nfreq
        self.register_buffer("dct", dct_matrix(b), persistent=False)
        m = torch.tensor(_RGB_TO_YCC, dtype=torch.float64)
        self.register_buffer("to_ycc", m.float(), persistent=False)
        self.register_buffer("from_ycc", torch.linalg.inv(m).float(), persistent=False)
        cand = torch.zeros(self.nfreq, dtype=torch.bool)
        cand[candidate_frequencies(b, cfg.band)] = True
        self.register_buffer("candidates", cand, persistent=False)
        self.trunk = nn.Sequential(
            nn.Conv2d(ch, h, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
        )
        self.coef_head = nn.Conv2d(h, ch, 1)
        # a fresh trigger is a random DCT pattern (rms ~0.4 amplitude), not ~0: from the
        # first step the encoder has a trigger to tell apart (the default init gave ~49 dB)
        nn.init.normal_(self.coef_head.bias, std=0.5)
        # adaptive frequency selection: global learnable logits + image-dependent ones
        self.freq_logits = nn.Parameter(0.1 * torch.randn(3, self.nfreq))
        self.score_head = nn.Linear(h, ch)
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)

    # ------------------------------------------------------------------ colour
    def _color(self, x: Tensor, matrix: Tensor, offset: bool) -> Tensor:
        y = torch.einsum("ij,bjhw->bihw", matrix.to(x.dtype), x)
        if offset:
            y = y + x.new_tensor([0.0, 0.5, 0.5]).view(1, 3, 1, 1)
        return y

    def _pad(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        return pad_to_multiple(x, self.config.block)

    # ---------------------------------------------------------------- pieces
    def coefficients(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(coef [B, 3, F, Hb, Wb], mask [B, 3, F])``: the trigger in the DCT domain.

        ``x`` must have ``H, W`` multiples of ``block`` (``forward`` pads).
        ``mask`` is 1 on the ``top_k`` selected frequencies of each image and
        colour channel (forward value; its gradient is the sigmoid's).
        """
        cfg = self.config
        n = x.shape[0]
        xc = self._color(x, self.to_ycc, True) if cfg.color_space == "ycbcr" else x
        feats_in = block_dct(xc - 0.5, cfg.block, self.dct) / cfg.block  # DC in [-0.5, 0.5]
        feats_in = feats_in.reshape(n, 3 * self.nfreq, *feats_in.shape[-2:])
        feats = self.trunk(feats_in)
        raw = self.coef_head(feats).reshape(n, 3, self.nfreq, *feats.shape[-2:])
        scores = self.freq_logits[None] + self.score_head(feats.mean(dim=(-2, -1))).reshape(n, 3, self.nfreq)
        cand = self.candidates.view(1, 1, -1)
        with torch.no_grad():
            idx = scores.masked_fill(~cand, -math.inf).topk(cfg.top_k, dim=-1).indices
            hard = torch.zeros_like(scores).scatter_(-1, idx, 1.0)
        soft = torch.sigmoid(scores) * cand
        mask = hard + soft - soft.detach()
        coef = cfg.amplitude * cfg.coef_gain * torch.tanh(raw) * mask[..., None, None]
        return coef, mask

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        xp, size = self._pad(x)
        coef, _ = self.coefficients(xp)
        t = block_idct(coef, cfg.block, self.dct)
        if cfg.color_space == "ycbcr":
            t = self._color(t, self.from_ycc, False)  # a difference: no offset
        t = crop_to(t, size)
        return cfg.amplitude * torch.tanh(t / cfg.amplitude)


# ===================================================================== the model
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
        from ..codecs import architecture_name, fingerprint

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

        from ..fileio import atomic_write

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

        from ..codecs import fingerprint

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


# ================================================================ dynamic balance
class DynamicBalance:
    """Loss weights from the running magnitudes of the terms (see the module docstring).

    ``update(values)`` takes every term's current value (floats, the anchor
    included) and returns the weights of the non-anchor terms as Python floats:
    ``prior_k * clip(m_anchor / max(m_k, floor * m_k(0)), w_min, w_max)`` with
    ``m`` the EMA of ``|value|``. ``mode="fixed"`` returns the priors.
    """

    def __init__(self, priors: Mapping[str, float], anchor: str = "rd_clean", mode: str = "dynamic",
                 beta: float = 0.9, floor: float = 0.1, w_min: float = 1e-3, w_max: float = 1e3):
        if mode not in ("dynamic", "fixed"):
            raise ConfigError(f"balance must be 'dynamic' or 'fixed', not {mode!r}")
        if not 0.0 <= beta < 1.0 or not 0.0 < floor <= 1.0 or not 0.0 < w_min <= w_max:
            raise ConfigError("need 0 <= beta < 1, 0 < floor <= 1 and 0 < w_min <= w_max")
        self.priors = {k: float(v) for k, v in priors.items()}
        self.anchor, self.mode = anchor, mode
        self.beta, self.floor, self.w_min, self.w_max = beta, floor, w_min, w_max
        self.ema: Dict[str, float] = {}
        self.first: Dict[str, float] = {}

    def update(self, values: Mapping[str, float]) -> Dict[str, float]:
        for k, v in values.items():
            v = abs(float(v))
            if not math.isfinite(v):
                continue  # a bad batch does not poison the running magnitude
            if k not in self.ema:
                self.ema[k] = v
                self.first[k] = max(v, 1e-8)
            else:
                self.ema[k] = self.beta * self.ema[k] + (1.0 - self.beta) * v
        return self.weights()

    def weights(self) -> Dict[str, float]:
        if self.mode == "fixed" or self.anchor not in self.ema:
            return dict(self.priors)
        ref = max(self.ema[self.anchor], 1e-8)
        out = {}
        for k, p in self.priors.items():
            if k not in self.ema:
                out[k] = p
                continue
            m = max(self.ema[k], self.floor * self.first[k], 1e-12)
            out[k] = p * min(max(ref / m, self.w_min), self.w_max)
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"ema": dict(self.ema), "first": dict(self.first)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = dict(state.get("ema", {}))
        self.first = dict(state.get("first", {}))


# ======================================================================= training
@dataclass
class BAvAFTTrainConfig:
    """Hyper-parameters of a BAvAFT run (names as :class:`~psic_adapter.train.TrainConfig`'s).

    Args:
        steps, batch_size, crop: optimisation steps, batch, square crop size.
        lr: the encoder's learning rate (g_a, h_a); 1e-5 as the project's stage 2
            (fine-tuning pretrained codec weights: Adam at 1e-4 moved the clean
            mode by ~1 dB and changed its top-1 in 30 steps here).
        trigger_lr: the trigger network's (a fresh network).
        lmbda: RD lambda (``lmbda * 255**2 * MSE``); default CompressAI's for the quality.
        objective: the attack: "uaeo", "margin", "naive" or "authors" (as the Trainer's).
        s, margin: UAEO temperature, margin objective's margin (logits).
        rate_weight, attack_weight, distortion_weight: the priors of the poisoned
            rate, the attack and the poisoned distortion (relative to the clean RD loss).
        balance: "dynamic" (:class:`DynamicBalance`) or "fixed" (the priors).
        balance_beta, balance_floor, balance_min, balance_max: its EMA factor,
            floor (fraction of a term's first magnitude) and weight clip.
        clip_max_norm: gradient clipping (1.0 as the project).
        lr_milestones: fractions of ``steps`` where both learning rates drop 10x.
        amp: "auto" (bf16 on CUDA), "bf16" or "off".
    """

    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-5
    trigger_lr: float = 1e-3
    lmbda: Optional[float] = None
    objective: str = "uaeo"
    s: float = 0.1
    margin: float = 5.0
    rate_weight: float = 1.0
    attack_weight: float = 1.0
    distortion_weight: float = 1.0
    balance: str = "dynamic"
    balance_beta: float = 0.9
    balance_floor: float = 0.1
    balance_min: float = 1e-3
    balance_max: float = 1e3
    clip_max_norm: float = 1.0
    lr_milestones: Sequence[float] = ()
    amp: str = "auto"
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.balance not in ("dynamic", "fixed"):
            raise ConfigError(f"balance must be 'dynamic' or 'fixed', not {self.balance!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ConfigError("amp must be auto|bf16|off")
        for name in ("steps", "batch_size", "crop"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.batch_size < 2 and self.objective in ("uaeo", "authors"):
            raise ConfigError("the UAEO objective compares captions within a batch: use batch_size >= 2")

    def resolved_lmbda(self, quality: Optional[int] = None) -> float:
        return self.lmbda if self.lmbda is not None else COMPRESSAI_LAMBDAS.get(quality, 0.0067)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


def _split_likelihoods(lik: Any, n: int) -> Tuple[Any, Any]:
    """Split every likelihood tensor (nested dicts/lists) at batch index ``n``."""
    if isinstance(lik, Tensor):
        return lik[:n], lik[n:]
    if isinstance(lik, Mapping):
        parts = {k: _split_likelihoods(v, n) for k, v in lik.items()}
        return {k: a for k, (a, _) in parts.items()}, {k: b for k, (_, b) in parts.items()}
    if isinstance(lik, (list, tuple)):
        parts = [_split_likelihoods(v, n) for v in lik]
        return [a for a, _ in parts], [b for _, b in parts]
    raise ConfigError(f"unexpected likelihoods of type {type(lik).__name__}")


class BAvAFTTrainer(TrainingLoop):
    """Fit a :class:`BAvAFT` (trigger network + encoder) against a frozen target.

    Shares the project's training loop (:class:`~psic_adapter.train.TrainingLoop`:
    seeded epochs, JSON-lines log, checkpoints, resume) and its encryption
    objectives (:class:`~psic_adapter.objectives.EncryptionObjective`, ensembles
    included), and replaces the model side: one batched codec forward of
    ``[x, poison(x)]`` per step, the loss of the module docstring, Adam with two
    groups ("encoder": ``lr``, "trigger": ``trigger_lr``), gradient clipping,
    MultiStepLR. Single process (no DDP).

    Writes ``out_dir/bavaft/`` (:meth:`BAvAFT.save_pretrained`), ``log.jsonl``
    and ``bavaft_checkpoint.safetensors`` (resumable).
    """

    done_marker = ("bavaft", CONFIG_NAME)
    checkpoint_name = CHECKPOINT_NAME
    postfix_keys = ("loss", "psnr_clean", "psnr_poisoned", "attack")

    def __init__(self, model: BAvAFT, target, dataset, config: BAvAFTTrainConfig, out_dir: PathLike,
                 quality: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
                 recipe: Optional[Dict[str, Any]] = None):
        if not isinstance(model, BAvAFT):
            raise ConfigError("BAvAFTTrainer takes a BAvAFT model")
        if not isinstance(config, BAvAFTTrainConfig):
            raise ConfigError("BAvAFTTrainer takes a BAvAFTTrainConfig")
        self._init_loop(dataset, config, out_dir, device, progress, recipe)
        self.model, self.target = model, target
        self.quality = quality
        cuda = self.device.type == "cuda"
        self.objective = EncryptionObjective(target, config.objective, amp=(cuda and config.amp == "auto") or config.amp == "bf16",
                                             device_type=self.device.type)
        self.lmbda = config.resolved_lmbda(quality)
        model.to(self.device)
        target.to(self.device)
        self.param_groups = [
            {"params": model.encoder_parameters(), "lr": config.lr, "name": "encoder"},
            {"params": model.trigger_parameters(), "lr": config.trigger_lr, "name": "trigger"},
        ]
        self.optimizer = torch.optim.Adam(self.param_groups)
        milestones = sorted({max(1, int(f * config.steps)) for f in config.lr_milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=0.1)
        self.balance = DynamicBalance(
            {"rate_poisoned": config.rate_weight, "attack": config.attack_weight,
             "dist_poisoned": config.distortion_weight},
            anchor="rd_clean", mode=config.balance, beta=config.balance_beta, floor=config.balance_floor,
            w_min=config.balance_min, w_max=config.balance_max,
        )

    @property
    def bar_desc(self) -> str:
        return "BAvAFT"

    # --------------------------------------------------------------- one step
    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimisation step; returns the loss terms, weights and PSNRs as floats."""
        cfg, model = self.cfg, self.model
        model.train()
        x = batch["image"].to(self.device, non_blocking=True)
        texts = batch.get("text") or [""] * x.shape[0]
        n = x.shape[0]
        views = self.objective.view_for_encryption(x, texts)

        x_p = model.poison(x)
        x_in, size = pad_to_multiple(torch.cat([x, x_p]), PAD_MULTIPLE)
        with self.objective.autocast():
            out = model.codec(x_in)
        x_hat = crop_to(out["x_hat"].float(), size)
        xh_clean, xh_pois = x_hat[:n], x_hat[n:]
        lik_clean, lik_pois = _split_likelihoods(out["likelihoods"], n)
        num_pixels = n * x_in.shape[-2] * x_in.shape[-1]
        from .. import losses

        scale = self.lmbda * 255.0**2
        bpp_clean = losses.rate_loss(lik_clean, num_pixels)
        bpp_pois = losses.rate_loss(lik_pois, num_pixels)
        mse_clean = F.mse_loss(xh_clean, x)
        mse_pois = F.mse_loss(xh_pois, x)
        rd_clean = bpp_clean + scale * mse_clean
        attack = self.objective.encryption_loss(xh_pois, views)
        parts = {"rate_poisoned": bpp_pois, "attack": attack, "dist_poisoned": scale * mse_pois}
        weights = self.balance.update({"rd_clean": float(rd_clean.detach()),
                                       **{k: float(v.detach()) for k, v in parts.items()}})
        loss = rd_clean + sum(weights[k] * v for k, v in parts.items())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_max_norm) if cfg.clip_max_norm else None
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1

        rec = {
            "loss": float(loss.detach()),
            "rd_clean": float(rd_clean.detach()),
            "bpp_clean": float(bpp_clean.detach()),
            "bpp_poisoned": float(bpp_pois.detach()),
            "mse_clean": float(mse_clean.detach()),
            "mse_poisoned": float(mse_pois.detach()),
            "attack": float(attack.detach()),
            "trigger_linf": float((x_p.detach() - x).abs().max()),
        }
        rec["psnr_clean"] = _psnr(torch.tensor(rec["mse_clean"]))
        rec["psnr_poisoned"] = _psnr(torch.tensor(rec["mse_poisoned"]))
        rec["psnr_trigger"] = _psnr(F.mse_loss(x_p.detach(), x))
        rec.update({f"w_{k}": float(v) for k, v in weights.items()})
        if grad_norm is not None:
            rec["grad_norm"] = float(grad_norm)
        return rec

    def log_fields(self) -> Dict[str, Any]:
        return {"lr_encoder": self.optimizer.param_groups[0]["lr"], "lr_trigger": self.optimizer.param_groups[1]["lr"]}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "model_config": self.model.config.to_dict(),
            "base_fingerprint": self.model.base_fingerprint,
            "state": {k: v.detach().cpu() for k, v in self.model.bavaft_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "balance": self.balance.state_dict(),
        }

    def load_checkpoint_state(self, state: Dict[str, Any], path: Path) -> None:
        if state.get("format") != FORMAT:
            raise PSICError(f"{path}: not a BAvAFT checkpoint")
        if state["base_fingerprint"] != self.model.base_fingerprint:
            raise FingerprintMismatchError(f"{path} was made on another base codec")
        if state["model_config"] != self.model.config.to_dict():
            raise PSICError(f"{path} was made with another BAvAFT configuration: {state['model_config']}")
        self.model.load_bavaft_state_dict(state["state"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.balance.load_state_dict(state["balance"])

    def finish(self, last: Dict[str, float]) -> Dict[str, Any]:
        """Save ``out_dir/bavaft`` and a final checkpoint."""
        self.model.eval()
        training = {
            **self.recipe,
            "train_config": self.cfg.to_dict(),
            "lmbda": self.lmbda,
            "steps_done": self.step_count,
            "target": getattr(self.target, "name", type(self.target).__name__),
            "final": {k: v for k, v in last.items() if isinstance(v, float)},
        }
        out = self.model.save_pretrained(self.out_dir / "bavaft", training=training, force=True)
        self.save_checkpoint()
        return {"steps": self.step_count, "last": last, "bavaft": str(out), "log": str(self.out_dir / "log.jsonl")}


def train_bavaft(model: BAvAFT, target, dataset, config: Optional[BAvAFTTrainConfig], out_dir: PathLike,
                 resume: bool = False, force: bool = False, **kwargs) -> Dict[str, Any]:
    """Train ``model`` (trigger + encoder) against ``target`` on ``dataset``; see :class:`BAvAFTTrainer`.

    ``kwargs`` go to the trainer (``quality``, ``device``, ``progress``, ``recipe``).
    Returns ``{"steps", "last", "bavaft" (the saved folder), "log"}``.
    """
    trainer = BAvAFTTrainer(model, target, dataset, config or BAvAFTTrainConfig(), out_dir, **kwargs)
    return trainer.train(resume=resume, force=force)


# ===================================================================== evaluation
class _Codecs:
    """What the runner's helpers read off ``Evaluator.model``: ``.base`` (the base
    codec: the "codec" perturbation re-encodes with it) and ``.eval()``."""

    def __init__(self, bavaft: BAvAFT, base: nn.Module):
        self.bavaft, self.base = bavaft, base

    def eval(self):
        self.bavaft.eval()
        self.base.eval()
        return self


class BAvAFTEvaluator(Evaluator):
    """The project's :class:`~psic_adapter.eval.runner.Evaluator` on a BAvAFT model.

    Per image, three real encodings (bpp from the bytes) decoded by the
    *unmodified* base codec:

    * ``"base"``: the base codec on ``x``;
    * ``"full"``: BAvAFT's clean mode (fine-tuned encoder on ``x``);
    * ``"encrypted"``: the poisoned mode (trigger, then the fine-tuned encoder).

    ``run`` then computes every metric as for PSIC (PSNR/MS-SSIM, top-1, ASR of
    the poisoned mode against the base decode, retrieval, robustness), and
    adds ``bpp_encrypted`` and ``bpp_base`` (``bpp`` is the clean mode's).
    Wrong keys and the white-box key attacker do not apply (no key) and are
    off. The result's "full" is the clean mode and "encrypted" the poisoned one
    (:func:`bavaft_headline` names them so).
    """

    def __init__(self, model: BAvAFT, target, base_codec: Optional[nn.Module] = None,
                 config: Optional[EvalConfig] = None, device: str = "cpu", progress: bool = True):
        from ..eval.runner import _class_names

        if not isinstance(model, BAvAFT):
            raise ConfigError("BAvAFTEvaluator takes a BAvAFT model")
        base = base_codec if base_codec is not None else model.base_codec()
        self.bavaft, self.base_codec = model, base
        self.model = _Codecs(model, base)
        self.target = target
        self.key = "BAvAFT clean mode"  # not a key: makes the runner measure the "full" (clean) version
        self.cfg = dataclasses.replace(config or EvalConfig(), wrong_keys=0, attack_steps=0)
        self.device = torch.device(device)
        self.progress = progress
        self.class_names = _class_names(target, self.cfg)
        self.prompts = None if target.kind == "classifier" else [self.cfg.prompt.format(n) for n in self.class_names]
        self.model.eval()
        self._extra: List[Dict[str, float]] = []

    @torch.no_grad()
    def _code(self, codec: nn.Module, enc: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
        """Decode with ``codec``; also the latent ``y_hat`` it synthesised from."""
        seen = {}
        handle = codec.g_s.register_forward_pre_hook(lambda m, args: seen.setdefault("y", args[0]))
        try:
            x_hat = crop_to(codec.decompress(enc["strings"], enc["shape"])["x_hat"], enc["size"])
        finally:
            handle.remove()
        if not torch.isfinite(x_hat).all():
            raise PSICError("a decode is not finite (entropy coding must run on the CPU)")
        return x_hat.clamp(0, 1), seen.get("y")

    @torch.no_grad()
    def decode(self, sample: Sample) -> Dict[str, Any]:
        from ..coding import encode
        from ..eval import metrics as M

        x = sample.image
        enc_base = encode(self.base_codec, x)
        enc_clean = self.bavaft.encode(x, poisoned=False)
        enc_pois = self.bavaft.encode(x, poisoned=True)
        h, w = enc_base["size"]
        x_base, _ = self._code(self.base_codec, enc_base)
        x_clean, y_clean = self._code(self.base_codec, enc_clean)  # the receiver's codec decodes both modes
        x_pois, y_pois = self._code(self.base_codec, enc_pois)
        out = {
            "bpp": M.bpp_from_strings(enc_clean["strings"], h * w),
            "bpp_encrypted": M.bpp_from_strings(enc_pois["strings"], h * w),
            "bpp_base": M.bpp_from_strings(enc_base["strings"], h * w),
            "y_hat": y_clean,
            "y_hat_encrypted": y_pois,
            "size": (h, w),
            "base": x_base,
            "full": x_clean,
            "encrypted": x_pois,
        }
        self._extra.append({k: out[k] for k in ("bpp_encrypted", "bpp_base")})
        return out

    def run(self, samples: Sequence[Sample]) -> Dict[str, Any]:
        from ..eval import metrics as M

        self._extra = []
        result = super().run(samples)
        extra, self._extra = self._extra, []
        for row, e in zip(result["per_image"], extra):
            row["bpp_encrypted"] = e["bpp_encrypted"]
            row["bpp_base"] = e["bpp_base"]
        result["bpp_encrypted"] = M.summarize([e["bpp_encrypted"] for e in extra])
        result["bpp_base"] = M.summarize([e["bpp_base"] for e in extra])
        result["method"] = "BAvAFT"
        result["versions"] = {"base": "base codec", "full": "BAvAFT clean mode", "encrypted": "BAvAFT poisoned mode"}
        result["encodings_per_image"] = 2
        result["not_applicable"] = ["wrong_keys", "whitebox"]
        return result


def bavaft_headline(result: Mapping[str, Any]) -> Dict[str, Any]:
    """The numbers to read first, in BAvAFT's words (clean / poisoned modes vs the base codec)."""
    h = headline(dict(result))
    q = result["quality"]
    cls = result["classification"]
    out = {
        "images": h["images"],
        "bpp_base": result["bpp_base"]["mean"],
        "bpp_clean": result["bpp"]["mean"],
        "bpp_poisoned": result["bpp_encrypted"]["mean"],
        "psnr_base": q["base"]["psnr"]["mean"],
        "psnr_clean": q["full"]["psnr"]["mean"],
        "psnr_poisoned": q["encrypted"]["psnr"]["mean"],
        "asr_poisoned": cls["asr"],
        "asr_clean": cls.get("full_asr"),
        "clean_agreement_with_base": cls.get("full_agreement_with_base"),
        "n_base_right": cls["n_base_right"],
    }
    for name, r in result.get("robustness", {}).items():
        out[f"asr_poisoned_{name}"] = r["asr"]
    if result.get("retrieval"):
        out.update({f"retrieval_{k}": v for k, v in result["retrieval"]["asr"].items()})
    return out
