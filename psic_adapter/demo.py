"""``psic demo``: the whole job end to end, offline, on the CPU, in minutes.

1. **A codec**: the checkpoint given; otherwise CompressAI's zoo weights when
   they can be downloaded; otherwise a small codec trained from scratch on the
   bundled photos, which is the paper's stage 1 (codec and CLTG together).
2. **A key**: a fresh random owner key, written to ``OUT/owner.key`` (mode 600).
3. **An adapter** fitted (stage 2, adapter only) against the real ImageNet
   EfficientNet-Lite0 on crops of the bundled training photos.
4. **One bitstream, two decodings**: a test photo compressed to
   ``OUT/example.psic`` and decoded to ``example_encrypted.png`` (no key) and
   ``example_full.png`` (the owner's key).
5. **An evaluation** on bundled photos never trained on: ``OUT/report/report.html``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .errors import OverwriteError, PSICError

PathLike = Union[str, os.PathLike]


@dataclass
class DemoConfig:
    codec: str = "bmshj2018-hyperprior"
    quality: int = 3
    checkpoint: Optional[Sequence[PathLike]] = None
    # sized so that the from-scratch path fits ~15 minutes on 2 CPU cores (measured: docs/benchmarks.md)
    scratch_steps: int = 250  # stage 1 from scratch, when no codec can be had
    adapter_steps: int = 350  # stage 2, adapter only
    batch: int = 8
    crop: int = 128
    eval_crops: int = 32
    eval_crop: int = 224
    wrong_keys: int = 10
    attack_steps: int = 10
    target: str = "efficientnet-lite0"
    seed: int = 0


def _percent(value: float) -> str:
    """``12.3 %``, or ``n/a`` for an undefined rate (NaN: nothing to count)."""
    return "n/a" if value != value else f"{100 * value:.1f} %"


def _say(msg: str) -> None:
    print(f"[psic demo] {msg}", flush=True)


def _get_codec(cfg: DemoConfig):
    """(codec, how it was obtained, checkpoint used or None)."""
    from .codecs import load_codec

    if cfg.checkpoint:
        return load_codec(cfg.codec, cfg.quality, checkpoint=cfg.checkpoint), f"checkpoint {', '.join(map(str, cfg.checkpoint))}", cfg.checkpoint
    try:
        codec = load_codec(cfg.codec, cfg.quality, pretrained=True)
        return codec, f"CompressAI zoo {cfg.codec} quality {cfg.quality}", None
    except PSICError as exc:
        _say(f"no pretrained codec available ({exc.__class__.__name__}): {str(exc).split(';')[0]}")
        return None, "", None


def run_demo(out_dir: PathLike = "psic-demo", config: Optional[DemoConfig] = None, force: bool = False) -> Dict[str, Any]:
    """Run the demo; returns the headline numbers and the paths written."""
    import torch

    from .adapter import load_adapter, wrap_model
    from .codecs import build_codec, prepare_for_coding
    from .coding import decode_file, encode_file
    from .condition import generate_key, write_key_file
    from .config import PSICConfig
    from .data import SamplePhotos, sample_photo
    from .eval.runner import EvalConfig, Evaluator, headline, load_samples, write_eval_report
    from .images import save_image
    from .targets import build_target
    from .train import TrainConfig, Trainer

    cfg = config or DemoConfig()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OverwriteError(f"{out} exists and is not empty (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)

    key = generate_key()
    key_path = write_key_file(out / "owner.key", key, force=True)
    _say(f"owner key: {key_path} (keep it: it is what decodes the full version)")

    target = build_target(cfg.target)
    _say(f"target: {target.name} (real ImageNet weights)")

    codec, source, checkpoint = _get_codec(cfg)
    train_data = SamplePhotos("train", crop=cfg.crop, seed=cfg.seed, repeats=max(1, 8 * cfg.batch // 6))
    adapter_cfg = PSICConfig(modulation="film")  # measured better than the bias alone: docs/results.md
    from_scratch = codec is None
    if from_scratch:
        source = f"a small {cfg.codec} trained from scratch on the bundled photos ({cfg.scratch_steps} steps, paper stage 1)"
        _say(f"training {source}")
        codec = prepare_for_coding(build_codec(cfg.codec, cfg.quality))
        model = wrap_model(codec, adapter_cfg, key=key, quality=cfg.quality)
        stage1 = TrainConfig(stage=1, steps=cfg.scratch_steps, batch_size=cfg.batch, crop=cfg.crop, lr=1e-3,
                             adapter_lr=1e-3, seed=cfg.seed, log_every=25)
        res = Trainer(model, target, train_data, stage1, out / "stage1", quality=cfg.quality, device="cpu",
                      recipe={"codec": cfg.codec, "quality": cfg.quality, "from_scratch": True}).train(force=True)
        checkpoint = [res["codec"]]
        model = load_adapter(model.unwrap(), res["adapter"], key=key, is_trainable=True)
    else:
        _say(f"codec: {source}")
        model = wrap_model(codec, adapter_cfg, key=key, quality=cfg.quality)

    _say(f"fitting the adapter: stage 2, adapter only, {cfg.adapter_steps} steps against {target.name}")
    stage2 = TrainConfig(stage=2, adapter_only=True, steps=cfg.adapter_steps, batch_size=cfg.batch, crop=cfg.crop,
                         objective="margin", seed=cfg.seed, log_every=25)
    res2 = Trainer(model, target, train_data, stage2, out / "adapter-run", quality=cfg.quality, device="cpu",
                   recipe={"codec": cfg.codec, "quality": cfg.quality, "codec_source": source,
                           "data": "samples (train split)"}).train(force=True)
    adapter_dir = Path(res2["adapter"])
    model = load_adapter(model.unwrap(), adapter_dir)

    # one bitstream, two decodings, through real files
    photo, _ = sample_photo("grace_hopper")
    src = out / "example.png"
    save_image(photo, src, force=True)
    enc = encode_file(src, out / "example.psic", model, codec_name=cfg.codec, quality=cfg.quality, force=True)
    decode_file(out / "example.psic", out / "example_encrypted.png", model, force=True)
    decode_file(out / "example.psic", out / "example_full.png", model, key=key, force=True)
    _say(f"{enc.path}: {enc.bpp:.3f} bpp -> example_encrypted.png (no key), example_full.png (owner key)")

    _say("evaluating on bundled photos never trained on")
    evaluator = Evaluator(model, target, key=key, config=EvalConfig(wrong_keys=cfg.wrong_keys, attack_steps=cfg.attack_steps,
                                                                    attack_images=8, seed=cfg.seed))
    runs = {"whole photos": evaluator.run(load_samples("samples"))}
    if cfg.eval_crops:
        evaluator.cfg.grid_images = 0
        evaluator.cfg.attack_steps = 0
        runs[f"{cfg.eval_crops} crops"] = evaluator.run(load_samples("samples", crop=cfg.eval_crop, count=cfg.eval_crops, seed=cfg.seed))
    meta = {"title": "psic demo", "codec": source, "target": target.name, "adapter": str(adapter_dir),
            "minutes": round((time.perf_counter() - t_start) / 60, 2)}
    html = write_eval_report(out / "report", runs, meta, force=True)
    heads = {name: headline(r) for name, r in runs.items()}
    for name, h in heads.items():
        _say(
            f"{name}: {h['bpp']:.3f} bpp | PSNR base {h['psnr_base']:.2f} / full {h['psnr_full']:.2f} / encrypted "
            f"{h['psnr_encrypted']:.2f} dB | ASR {_percent(h['asr'])} ({h['n_base_right']} right for the base) | "
            f"full agrees with base {_percent(h['full_agreement_with_base'])}"
        )
    if any(h["n_base_right"] == 0 for h in heads.values()):
        _say("ASR is n/a where the target gets no base decode right: ASR counts flips among those")
    if from_scratch:
        _say("a codec trained for minutes is far from a real one; for meaningful numbers give --checkpoint FILE "
             "(a trained CompressAI codec) or run where the zoo's weights can be downloaded")
    _say(f"report: {html}  ({meta['minutes']} min)")
    return {"report": str(html), "adapter": str(adapter_dir), "headline": heads, "codec": source,
            "checkpoint": [str(c) for c in checkpoint] if checkpoint else None}
