"""Attacks on the key: wrong keys fed to the network, and a white-box attacker on the condition.

Both run at an evaluation's primary scale, on methods with a key condition
(:attr:`~.protocol.VersionDecoder.has_conditions`), and take the decoder, the judge
(:class:`~.measure.Judge`), the evaluation's config and that scale's images, decodes, labels and
base answers:

* :func:`wrong_keys` -- conditions of random keys fed to the network directly,
  bypassing the library's key check (which maps a wrong key to the encrypted
  condition exactly): their ASR and PSNR should match the encrypted version's.
* :func:`whitebox` -- an attacker who holds the adapter but not the key
  optimises one condition vector for all images; the ASR that survives.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from . import metrics as M
from .config import EvalConfig
from .measure import Judge, bar
from .protocol import Decoded, VersionDecoder
from .record import Stat, WhiteBox, WrongKeys


def _centre(y: Tensor, size: int) -> Tensor:
    """The centre ``size x size`` of a latent (the attacker optimises on 16x-larger patches)."""
    h, w = y.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return y[..., top: top + size, left: left + size]


class _NoParameterGrads:
    """Inside: no parameter of the modules collects gradients (the attack optimises a condition)."""

    def __init__(self, modules):
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)
        return False


@torch.no_grad()
def wrong_keys(decoder: VersionDecoder, judge: Judge, config: EvalConfig, originals, decoded: List[Decoded], labels,
               base_pred, progress: bool = False) -> WrongKeys:
    """``config.wrong_keys`` random wrong-key conditions fed to the network: their ASR and PSNR."""
    g = torch.Generator().manual_seed(config.seed + 12345)
    conds = decoder.wrong_key_conditions(config.wrong_keys, generator=g)
    asrs, psnrs, diffs = [], [], []
    for c in bar(conds, "wrong keys", progress):
        preds = []
        for x, d in zip(originals, decoded):
            y = decoder.decode_condition(d, c[None])
            psnrs.append(float(M.psnr(y, x)[0]))
            diffs.append(float((y - d.images["encrypted"]).abs().max()))
            preds.append(int(judge.predict(y)[0]))
        asrs.append(M.classification_asr(base_pred, torch.tensor(preds), labels))
    return WrongKeys(n_keys=len(conds), asr=Stat.of(asrs), asr_min=min(asrs) if asrs else float("nan"),
                     psnr=Stat.of(psnrs), max_abs_diff_to_encrypted=max(diffs) if diffs else float("nan"))


def whitebox(decoder: VersionDecoder, judge: Judge, config: EvalConfig, originals, decoded: List[Decoded], labels,
             base_pred, progress: bool = False) -> WhiteBox:
    """An attacker with the adapter but not the key: one condition optimised for all images.

    Adam on the condition vector (from the encrypted one) minimises the target's
    prediction entropy on the decodes of the first ``attack_images`` images
    (their centre 256x256 patches, to bound the cost); then every image is
    decoded with it.
    """
    cfg = config
    target = judge.target
    n = min(cfg.attack_images, len(decoded))
    cond = decoder.encrypted_condition().clone().requires_grad_(True)
    opt = torch.optim.Adam([cond], lr=cfg.attack_lr)
    confidences = []
    with _NoParameterGrads(decoder.condition_parameters()):
        for _ in bar(range(cfg.attack_steps), "white-box attack", progress):
            opt.zero_grad(set_to_none=True)
            confidence = 0.0
            for d in decoded[:n]:
                small = Decoded(d.images, d.bpp, (256, 256), _centre(d.latent, 16))
                x = decoder.decode_condition(small, cond)
                p = target.logits(x.to(target.device), judge.prompts).float().softmax(-1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
                (entropy / n).backward()
                confidence += float(p.detach().max(-1).values.mean()) / n
            opt.step()
            confidences.append(confidence)
    with torch.no_grad():
        preds, psnrs = [], []
        for x, d in zip(originals, decoded):
            y = decoder.decode_condition(d, cond.detach())
            preds.append(int(judge.predict(y)[0]))
            psnrs.append(float(M.psnr(y, x)[0]))
    pred = torch.tensor(preds)
    return WhiteBox(steps=cfg.attack_steps, images_optimised_on=n, asr=M.classification_asr(base_pred, pred, labels),
                    agreement_with_base=M.agreement(pred, base_pred), psnr=Stat.of(psnrs),
                    confidence_start=confidences[0] if confidences else float("nan"),
                    confidence_end=confidences[-1] if confidences else float("nan"))
