"""The target side of a training step: what the target sees, and what it should see.

:class:`EncryptionObjective` wraps a frozen target (or an ensemble: one term
per member, weighted) and computes, for a batch of original images,

* the target's view of them (no gradients): image features, caption features
  (for a classifier, the rows of its predicted classes) and logits, only
  those that the step needs, each being a pass of the target;
* the **encryption objective** on a decode that should mislead the target:
  ``"uaeo"`` (paper eq. 5-9), ``"naive"`` (the ablation), ``"authors"`` (their
  code's variant) or ``"margin"`` (untargeted, on the logits);
* the **semantic guard** on a decode that should not: the KL divergence of the
  target's decision on it from its decision on a reference decode.

The PSIC trainer and the BAvAFT baseline share it, so both attack the target
the same way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import losses
from .errors import ConfigError

OBJECTIVES = ("uaeo", "naive", "authors", "margin")
#: expectation over transformation: none; "basic" (differentiable resize / blur / noise);
#: "real" (what a platform does: thumbnails, JPEG, blur, the base codec again, their mixes)
EOT_MODES = ("none", "basic", "real")

View = Dict[str, Any]


class EncryptionObjective:
    """Encryption objective and semantic guard against ``target``.

    Args:
        target: a :class:`~psic_adapter.targets.Target` (ensembles have ``members``).
        objective: one of :data:`OBJECTIVES`.
        s: UAEO scale factor.
        margin: margin of the ``"margin"`` objective, in logits.
        amp: run the target under bf16 autocast (on ``device_type``).
        eot: expectation over transformation, one of :data:`EOT_MODES` (``True``
            means ``"basic"``): :meth:`encryption_loss` shows the target each
            encrypted decode through a random transformation, so that the attack
            learns to survive it: ``"basic"`` (:func:`random_transform`: resize,
            blur, noise) or ``"real"`` (:func:`served_transform`: thumbnails of
            1-3x, real JPEG, blur, a second pass through the base codec).
        generator: the random source of ``eot``.
        codec: the base codec, for ``eot="real"``'s re-coding (``None``: skipped).
    """

    def __init__(self, target, objective: str = "uaeo", s: float = 0.1, margin: float = 5.0,
                 amp: bool = False, device_type: str = "cpu", eot=False,
                 generator: Optional[torch.Generator] = None, codec=None):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
        self.target, self.objective, self.s, self.margin = target, objective, s, margin
        self.amp, self.device_type = amp, device_type
        self.eot = eot_mode(eot)
        self.codec = codec
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def members(self) -> List[Tuple[Any, float]]:
        """``(target, weight)`` per ensemble member (the target itself otherwise)."""
        members = getattr(self.target, "members", None)
        if members:
            weights = getattr(self.target, "weights", None) or [1.0 / len(members)] * len(members)
            return list(zip(members, [float(w) for w in weights]))
        return [(self.target, 1.0)]

    @property
    def uses_logits(self) -> bool:
        """The objective reads the target's logits (else its features)."""
        return self.objective == "margin"

    def clean_view(self, x: Tensor, texts: Sequence[str], feats: bool = True, logits: bool = True) -> List[View]:
        """Per member: what the losses need of the target's view of the original images (no grad).

        ``feats``: image features and the captions' (or, for a classifier, the
        predicted labels') features, for the feature objectives; ``logits``: the
        target's logits (margin objective, guard reference). A classifier's
        labels are its own predictions on the originals.
        """
        views = []
        n = x.shape[0]
        with torch.no_grad(), self.autocast():
            for tgt, w in self.members():
                v = dict(target=tgt, weight=w, n=n, feats=None, logits=None, labels=None, text_feats=None, texts=None)
                if tgt.kind == "classifier":
                    if feats or logits:  # the predicted labels stand in for the captions
                        v["logits"] = tgt.logits(x).float()
                        v["labels"] = v["logits"].argmax(-1)
                        v["text_feats"] = tgt.label_features()[v["labels"]].float()
                else:
                    v["texts"] = list(texts)
                    v["labels"] = torch.arange(n, device=x.device)
                    if feats:
                        v["text_feats"] = tgt.text_features(v["texts"]).float()
                    if logits:
                        v["logits"] = tgt.logits(x, v["texts"]).float()
                if feats:
                    v["feats"] = tgt.image_features(x).float()
                views.append(v)
        return views

    def view_for_encryption(self, x: Tensor, texts: Sequence[str], logits: bool = False) -> List[View]:
        """The clean view that :meth:`encryption_loss` needs (plus logits when asked)."""
        return self.clean_view(x, texts, feats=not self.uses_logits, logits=self.uses_logits or logits)

    def encryption_loss(self, x_enc: Tensor, views: List[View]) -> Tensor:
        """The objective on decodes ``x_enc`` (a whole multiple of the viewed batch)."""
        total = x_enc.new_zeros(())
        n = x_enc.shape[0]
        if self.eot == "basic":
            x_enc = random_transform(x_enc, self.generator)
        elif self.eot == "real":
            with self.autocast():
                x_enc = served_transform(x_enc, self.generator, codec=self.codec).float()
        for v in views:
            reps = n // v["n"]
            texts = v["text_feats"]
            tgt = v["target"]
            with self.autocast():
                if self.objective == "margin":
                    out = tgt.logits(x_enc, v["texts"]).float()
                    loss = losses.untargeted_margin_loss(out, v["labels"].repeat(reps), margin=self.margin)
                else:
                    recon = tgt.image_features(x_enc).float()
                    if self.objective == "naive":
                        loss = losses.naive_cosine_loss(recon, texts.repeat(reps, 1))
                    else:
                        # UAEO pairs row i with caption i: one square batch per repeat
                        fn = losses.uaeo_loss if self.objective == "uaeo" else losses.authors_uaeo_loss
                        kw = {"s": self.s} if self.objective == "uaeo" else {}
                        loss = sum(fn(c, texts, v["feats"], **kw) for c in recon.chunk(reps)) / reps
            total = total + v["weight"] * loss
        return total

    def reference_logits(self, x_ref: Optional[Tensor], views: List[View]) -> List[Tensor]:
        """The target's logits on a reference decode (``None``: on the original images)."""
        if x_ref is None:
            return [v["logits"] for v in views]
        with torch.no_grad(), self.autocast():
            return [v["target"].logits(x_ref, v["texts"]).float() for v in views]

    def guard_loss(self, x_full: Tensor, views: List[View], ref_logits: List[Tensor]) -> Tensor:
        """``KL(target(reference) || target(x_full))``, summed over members by weight."""
        total = x_full.new_zeros(())
        for v, ref in zip(views, ref_logits):
            with self.autocast():
                out = v["target"].logits(x_full, v["texts"]).float()
            total = total + v["weight"] * losses.semantic_guard_loss(out, ref, kind="kl")
        return total


def random_transform(x: Tensor, generator: torch.Generator) -> Tensor:
    """One random, differentiable stand-in for what a served image goes through.

    With equal odds: nothing; a downscale by 0.4-0.9 (bicubic, antialiased; the
    target resizes again itself); a Gaussian blur with sigma 0.5-1.5; additive
    Gaussian noise of 1-4 / 255 (the rounding and blocking of a re-encode).
    One draw for the whole batch.
    """
    import torch.nn.functional as F

    u = torch.rand(2, generator=generator).tolist()
    kind = int(u[0] * 4)
    if kind == 1:
        scale = 0.4 + 0.5 * u[1]
        h, w = x.shape[-2:]
        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    if kind == 2:
        return random_transform_blur(x, 0.5 + u[1])
    if kind == 3:
        sigma = (1.0 + 3.0 * u[1]) / 255.0
        noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        return x + sigma * noise
    return x


def eot_mode(eot) -> str:
    """``True``/``False`` (older configs) or one of :data:`EOT_MODES`."""
    if eot is True:
        return "basic"
    if eot is False or eot is None:
        return "none"
    if eot not in EOT_MODES:
        raise ConfigError(f"eot must be one of {EOT_MODES}, not {eot!r}")
    return eot


def straight_through(x: Tensor, y: Tensor) -> Tensor:
    """``y`` in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (y.to(x.dtype) - x).detach()


def served_transform(x: Tensor, generator: torch.Generator, codec=None) -> Tensor:
    """One random draw of what happens to a served image before a model sees it.

    With equal odds: nothing; a thumbnail (an antialiased downscale by 1-3x, the
    target then resizes it itself); real JPEG at quality 60-90; a Gaussian blur
    with sigma 0.5-1.5; a second pass through the base ``codec`` (real entropy
    coding's equal: the codec's forward in eval mode, which rounds the latents;
    skipped without a codec); a thumbnail saved as JPEG. Real encoders are not
    differentiable: their gradient is the identity's (straight-through, as in
    BPDA), which is what makes an attack learn to survive them. One draw for
    the whole batch.
    """
    from .eval.robustness import jpeg

    kinds = 6 if codec is not None else 5
    u = torch.rand(3, generator=generator).tolist()
    kind = min(int(u[0] * kinds), kinds - 1)
    import torch.nn.functional as F

    def thumbnail(t: Tensor) -> Tensor:
        factor = 3.0 ** u[1]
        h, w = t.shape[-2:]
        size = (max(16, round(h / factor)), max(16, round(w / factor)))
        return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)

    quality = int(60 + 30 * u[2])
    if kind == 1:
        return thumbnail(x)
    if kind == 2:
        return straight_through(x, jpeg(x.detach().float().clamp(0, 1), quality=quality))
    if kind == 3:
        return random_transform_blur(x, 0.5 + u[1])
    if kind == 4:
        t = thumbnail(x)
        return straight_through(t, jpeg(t.detach().float().clamp(0, 1), quality=quality))
    if kind == 5:
        return straight_through(x, codec_forward(codec, x.detach().clamp(0, 1)))
    return x


@torch.no_grad()
def codec_forward(codec, x: Tensor, multiple: int = 64) -> Tensor:
    """The codec's eval-mode forward (rounded latents: what compress + decompress decode), padded and cropped."""
    from .images import crop_to, pad_to_multiple

    was_training = codec.training
    codec.eval()
    try:
        xp, size = pad_to_multiple(x, multiple)
        return crop_to(codec(xp)["x_hat"], size).clamp(0, 1)
    finally:
        codec.train(was_training)


def random_transform_blur(x: Tensor, sigma: float) -> Tensor:
    """A differentiable separable Gaussian blur (reflected borders)."""
    import torch.nn.functional as F

    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
