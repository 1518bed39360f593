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

from ..errors import ConfigError
from . import losses
from .eot import eot_mode, random_transform, served_transform

OBJECTIVES = ("uaeo", "naive", "authors", "margin")


def check_feature_weight(objective: str, feature_weight: float) -> None:
    """The feature-level term adds to the margin objective only (TrainConfig and the objective both ask)."""
    if feature_weight and objective != "margin":
        raise ConfigError(f"feature_weight adds to the margin objective, not to {objective!r}")


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
        feature_weight: ``"margin"`` only: add this weight times the feature-level
            term (:func:`~.losses.feature_similarity_loss`: the target's inner
            feature maps of the encrypted decode against the original's), read
            from the same pass as the logits, for each member that has inner
            feature maps (:attr:`Target.has_maps`; at least one must). 0 (default): the logits alone.
    """

    def __init__(self, target, objective: str = "uaeo", s: float = 0.1, margin: float = 5.0,
                 amp: bool = False, device_type: str = "cpu", eot=False,
                 generator: Optional[torch.Generator] = None, codec=None, feature_weight: float = 0.0):
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
        check_feature_weight(objective, feature_weight)
        self.feature_weight = float(feature_weight)
        self.target, self.objective, self.s, self.margin = target, objective, s, margin
        if self.feature_weight and not any(getattr(t, "has_maps", False) for t, _ in self.members()):
            raise ConfigError(f"feature_weight reads the feature maps of a classifier's inner stages: "
                              f"{getattr(target, 'name', 'the target')} has none (a timm classifier has them)")
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

    def _maps_of(self, target) -> bool:
        """Whether the feature term reads ``target``'s inner feature maps (members without them: the margin alone)."""
        return bool(self.feature_weight) and getattr(target, "has_maps", False)

    @staticmethod
    def _logits(target, x: Tensor, texts=None, maps: bool = False):
        """``(logits as float32, inner feature maps or None)`` of one pass of ``target``."""
        if maps:
            out, m = target.logits_and_maps(x, texts)
            return out.float(), m
        return target.logits(x, texts).float(), None

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
                v = dict(target=tgt, weight=w, n=n, feats=None, logits=None, labels=None, text_feats=None, texts=None,
                         maps=None)
                if tgt.kind == "classifier":
                    if feats or logits:  # the predicted labels stand in for the captions
                        v["logits"], v["maps"] = self._logits(tgt, x, maps=logits and self._maps_of(tgt))
                        v["labels"] = v["logits"].argmax(-1)
                        v["text_feats"] = tgt.label_features()[v["labels"]].float()
                else:
                    v["texts"] = list(texts)
                    v["labels"] = torch.arange(n, device=x.device)
                    if feats:
                        v["text_feats"] = tgt.text_features(v["texts"]).float()
                    if logits:
                        v["logits"], v["maps"] = self._logits(tgt, x, v["texts"], maps=self._maps_of(tgt))
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
                    out, maps = self._logits(tgt, x_enc, v["texts"], maps=v["maps"] is not None)
                    loss = losses.untargeted_margin_loss(out, v["labels"].repeat(reps), margin=self.margin)
                    if maps is not None:
                        loss = loss + self.feature_weight * losses.feature_similarity_loss(maps, v["maps"])
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
