"""Several targets judged together, for protection that transfers.

An adversarial decode tuned on one model often fools only that model; training
against an ensemble (e.g. CLIP + EfficientNet-Lite0) makes it transfer better.
:class:`EnsembleTarget` lets a loss written for one target run on several
unchanged, and keeps the members at hand for losses that want them one by one.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TargetError
from .base import Target

__all__ = ["EnsembleTarget"]


class EnsembleTarget(Target):
    """Weighted ensemble of targets.

    Args:
        targets: the member targets (CLIP models, classifiers).
        weights: one positive weight per member; normalised to sum to 1;
            default equal weights.

    How it combines its members:

    * :meth:`image_features`, :meth:`text_features`, :meth:`label_features`:
      each member's features are L2-normalised, scaled by ``sqrt(w_i)`` and
      concatenated. The cosine between an ensemble image feature and an
      ensemble text feature is therefore exactly the weighted mean of the
      members' cosines, so a cosine-based loss (UAEO, naive cosine) written
      for one target works unchanged. The features are already unit-norm;
      normalising them again changes nothing. Texts must make sense to every
      member: captions work for CLIP members only, class names for all.
    * :meth:`logits`: the log of the weighted mixture of the members'
      softmax probabilities, ``log(sum_i w_i softmax(logits_i))``. Members
      must score the same candidates: the same texts, or classifiers with the
      same classes and CLIP members given those ``class_names``. Its argmax is
      the ensemble's decision, and it is a valid input to cross-entropy.
    * :attr:`members` (an ``nn.ModuleList``) and :attr:`weights` are public:
      a loss may instead sum per-member losses,
      ``sum(w * loss(m) for m, w in zip(ens.members, ens.weights))``.

    An ensemble has no single preprocessing: each member preprocesses the
    images itself, so :meth:`preprocess` raises. :attr:`image_size` is the
    largest member's.
    """

    kind = "ensemble"

    def __init__(self, targets: Sequence[Target], weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        targets = list(targets)
        if not targets:
            raise TargetError("an ensemble needs at least one target")
        for t in targets:
            if not isinstance(t, Target):
                raise TargetError(f"ensemble members must be Targets, got {type(t).__name__}")
        if weights is None:
            weights = [1.0] * len(targets)
        weights = [float(w) for w in weights]
        if len(weights) != len(targets):
            raise TargetError(f"{len(weights)} weights for {len(targets)} ensemble members")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise TargetError(f"ensemble weights must be positive and finite, got {weights}")
        total = sum(weights)
        self.members = nn.ModuleList(targets)
        self.weights: List[float] = [w / total for w in weights]
        self.name = "+".join(t.name for t in targets)
        self.image_size = max(t.image_size for t in targets)
        dims = [t.feature_dim for t in targets]
        self.feature_dim = sum(dims) if all(d is not None for d in dims) else None
        names = [t.class_names for t in targets]
        self.class_names = list(names[0]) if names[0] is not None and all(n == names[0] for n in names) else None
        self._freeze()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        raise TargetError("an ensemble has no single preprocessing: each member preprocesses its own input")

    def _combine(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        device, dtype = feats[0].device, feats[0].dtype
        return torch.cat(
            [math.sqrt(w) * F.normalize(f.to(device=device, dtype=dtype), dim=-1) for f, w in zip(feats, self.weights)],
            dim=-1,
        )

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x sum(D_i)``: weighted, normalised member image features, concatenated."""
        return self._combine([m.image_features(x) for m in self.members])

    def text_features(self, texts) -> torch.Tensor:
        """``T x sum(D_i)``: weighted, normalised member text features (each member caches its own)."""
        return self._combine([m.text_features(texts) for m in self.members])

    def label_features(self) -> torch.Tensor:
        """``C x sum(D_i)``: weighted, normalised member label features (same classes for all)."""
        feats = [m.label_features() for m in self.members]
        if len({f.shape[0] for f in feats}) != 1:
            raise TargetError(f"{self.name}: members have different numbers of classes {[f.shape[0] for f in feats]}")
        return self._combine(feats)

    def logits(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """``B x C``: log of the weighted mean of the members' softmax probabilities."""
        outs = [m.logits(x, texts) for m in self.members]
        if len({tuple(o.shape) for o in outs}) != 1:
            raise TargetError(f"{self.name}: members score different candidates {[tuple(o.shape) for o in outs]}")
        device, dtype = outs[0].device, outs[0].dtype
        stacked = torch.stack(
            [F.log_softmax(o.to(device=device, dtype=dtype), dim=-1) + math.log(w) for o, w in zip(outs, self.weights)]
        )
        return torch.logsumexp(stacked, dim=0)
