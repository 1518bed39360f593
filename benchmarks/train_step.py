"""Training-step throughput: the project's ``Trainer.step`` against a naive step.

The naive step reproduces how the authors' public code trains (see
``../shared/paper/NOTES.md``; their ``train_conditional_{f,s}_epoch``):

* fp32 everywhere (``--naive-clip-dtype fp16`` casts its CLIP to half, as
  OpenAI's ``clip.load`` does on a GPU), no channels_last, no torch.compile;
* the CLIP text tower runs on every step for every caption, with autograd on
  (their CLIP's parameters require gradients and the text features enter the
  loss, so the backward pass goes through the text tower and fills CLIP's
  ``.grad``);
* CLIP's image tower runs, with autograd on, on the original images (for the
  DECL-style labels) and on the protected reconstructions;
* the whole codec runs in train mode: in stage 2 the encoder and entropy
  models are frozen (``requires_grad=False`` on everything but the decoder,
  here ``g_s`` and the adapter) but still run with autograd enabled and
  additive noise instead of rounding;
* one codec forward per step on the whole batch with a per-image mode (their
  ``betas = randint(0, 2, (bs,))``; here an exact half/half split so that
  timings do not depend on the draw): every image is decoded once, in one of
  the two versions. Loss: ``bpp + 0.5 (l 255^2 MSE_full + l 255^2 MSE_enc) +
  l_clip * closs`` with their DECL-style closs; Adam, grad clip 1.0, and in
  stage 1 CompressAI's aux step.

``naive-2pass`` is the variant where full and encrypted are decoded in two
separate full forward passes (each image decoded in both versions); the
project's ``joint`` schedule does the same work (both versions of every image)
and is compared with it. The project's default ``alternate`` schedule decodes
every image once per step (full and encrypted steps alternate), like the
authors' step, and is compared with ``naive``.

Timing: all contenders are built first, warmed up, then run interleaved
(A/B/C/D, A/B/C/D, ... the order rotated every round) on the same pre-built
batches; images/s = batch * steps / total time of that contender's steps.
Text features: the project's target caches them per caption, so in this
benchmark (and from the second epoch of a real run) the project never runs
the text tower; the naive step always does.

    python benchmarks/train_step.py                                  # CPU: ViT-B-32 (random weights)
    python benchmarks/train_step.py --target tiny-clip --steps 2     # a smoke run
    python benchmarks/train_step.py --batch 8 --crop 128 --steps 4 --json out.json
    python benchmarks/train_step.py --device cuda --batch 128 --crop 256 --compile

Targets: project / naive >= 1.5 on the 2-core CPU; the adapter-only fit (stage 2,
``project-adapter-only``: latents encoded once, the full version the base decode)
>= 3x the naive step.

The robust recipe's own step (scale views with their context, EOT, the budget controller,
EfficientNet-Lite0) is profiled part by part in ``benchmarks/robust_step.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse  # noqa: E402
KEY = "benchmark owner key"

# the tests' tiny offline CLIP (random weights, 32 px input)
TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, patch_size=8, width=16, layers=1, head_width=8),
    text_cfg=dict(context_length=16, vocab_size=49408, width=8, heads=2, layers=1),
)


# ------------------------------------------------------------------ building blocks
def build_codec(args):
    from psic_adapter.codec import build_codec as build, load_codec, prepare_for_coding

    if args.checkpoint:
        return load_codec(args.codec, quality=args.quality, checkpoint=args.checkpoint)
    torch.manual_seed(0)
    return prepare_for_coding(build(args.codec, args.quality))


def build_target(args, device):
    from psic_adapter.targets import CLIPTarget, build_target as build

    if args.target == "tiny-clip":
        torch.manual_seed(0)
        return CLIPTarget("ViT-B-32", pretrained=None, model_kwargs=TINY_CLIP, device=device)
    return build(args.target, weights=args.target_weights, device=device)


def make_batches(args, n: int) -> List[Dict]:
    from psic_adapter.data import SamplePhotos, collate

    data = SamplePhotos("train", crop=args.crop, repeats=max(1, -(-n * args.batch // 6)), seed=args.seed)
    return [collate([data[(i * args.batch + j) % len(data)] for j in range(args.batch)]) for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ the naive step
def authors_closs(recon: torch.Tensor, text_sub: torch.Tensor, text_all: torch.Tensor, clean: torch.Tensor,
                  stage: int) -> torch.Tensor:
    """Their DECL-style CLIP loss (``prediction`` + ``CLIP_Loss``), same shapes and work.

    Text features are NOT detached (their backward runs through the text tower).
    The i2t cross-entropy is taken against the whole batch's captions, as theirs is.
    """
    scale = 1.0 / 0.07
    with torch.no_grad():  # their prediction(): evidence on the clean images
        c = F.normalize(clean, dim=-1)
        t = F.normalize(text_sub, dim=-1)
        sim = scale * c @ t.t()
        sim = 0.5 * (sim + sim.t())
        ev = torch.exp(torch.tanh(sim) / 0.1)
        k = ev.shape[0]
        matched = (ev + ev.t()).argmax(dim=1) == torch.arange(k, device=ev.device)
        i2t = ev.argmin(dim=1)
        t2i = ev.argmin(dim=0)
    r = F.normalize(recon, dim=-1)
    ts = F.normalize(text_sub, dim=-1)
    ta = F.normalize(text_all, dim=-1)
    zero = recon.sum() * 0
    c_loss = (r[matched] * ts[matched]).sum(-1).mean() if matched.any() else zero
    n = ~matched
    if n.any():
        ce_i2t = F.cross_entropy(scale * r[n] @ ta.t(), i2t[n])
        ce_t2i = F.cross_entropy(scale * ts[n] @ r.t(), t2i[n])
        n_loss = 0.5 * (ce_i2t + ce_t2i)
    else:
        n_loss = zero
    if stage == 1:
        return 10 * c_loss + n_loss
    w1, w2 = 1 / (c_loss + 1e-8), 1 / (n_loss + 1e-8)  # their stage-2 "adaptive" weights (not detached)
    return (w1 * c_loss + w2 * n_loss) / (w1 + w2)


class NaiveStep:
    """The authors' training step on the same codec + adapter architecture (see the module docstring)."""

    def __init__(self, model, target, stage: int, lmbda: float, device: torch.device, two_pass: bool = False,
                 clip_dtype: str = "fp32"):
        from psic_adapter.training.losses import rate_loss

        self.model, self.stage, self.lmbda, self.device, self.two_pass = model, stage, lmbda, device, two_pass
        self.rate_loss = rate_loss
        model.to(device)
        base = model.base
        named = list(base.named_parameters())
        adapter = list(model.adapter_parameters())
        for p in adapter:
            p.requires_grad_(True)
        if stage == 1:
            for _, p in named:
                p.requires_grad_(True)
            main = [p for n, p in named if not n.endswith(".quantiles")] + adapter
            lr, self.l_clip = 1e-4, 0.0009
        else:  # their train_s: requires_grad only on 'g_s' parameters (here + the adapter)
            for n, p in named:
                p.requires_grad_(n.startswith("g_s."))
            main = [p for n, p in named if n.startswith("g_s.")] + adapter
            lr, self.l_clip = 1e-5, 0.07
        self.optimizer = torch.optim.Adam(main, lr=lr)
        self.aux_optimizer = torch.optim.Adam([p for n, p in named if n.endswith(".quantiles")], lr=1e-3)
        model.train()  # encoder, entropy models and decoder all in train mode (noise, not rounding)
        # their CLIP: a plain model whose parameters require grad (clip.load does not freeze it)
        self.clip = copy.deepcopy(target.model).to(device)
        self.clip.requires_grad_(True)
        if clip_dtype == "fp16":
            self.clip.half()
        self.clip_dtype = next(self.clip.parameters()).dtype
        self.tokenizer = target.tokenizer
        self.target = target  # only for its (differentiable) preprocessing: resize, centre crop, normalise
        self.full = model.full_condition().to(device)
        self.enc = model.encrypted_condition().to(device)
        self.g = torch.Generator().manual_seed(0)

    def _encode_image(self, x):
        x = self.target.preprocess(x).to(self.clip_dtype)
        return self.clip.encode_image(x).float()

    def step(self, batch) -> float:
        x = batch["image"].to(self.device)
        texts = list(batch["text"])
        b = x.shape[0]
        enc = torch.zeros(b, dtype=torch.bool)
        enc[torch.randperm(b, generator=self.g)[: b // 2]] = True
        enc = enc.to(self.device)
        tokens = self.tokenizer(texts).to(self.device)
        text = self.clip.encode_text(tokens).float()  # every step, every caption, autograd on
        if self.two_pass:  # each image decoded twice: full, then encrypted, in two whole forward passes
            out_f = self.model(x, condition=self.full.expand(b, -1))
            out_e = self.model(x, condition=self.enc.expand(b, -1))
            xf, xe = out_f["x_hat"].clamp(0, 1), out_e["x_hat"].clamp(0, 1)
            bpp = 0.5 * (self.rate_loss(out_f["likelihoods"], b * x.shape[-2] * x.shape[-1])
                         + self.rate_loss(out_e["likelihoods"], b * x.shape[-2] * x.shape[-1]))
            mse0, mse1 = F.mse_loss(xf, x), F.mse_loss(xe, x)
            x_enc, x_ref, t_sub = xe, x, text
        else:  # their step: one forward, the mode drawn per image
            cond = torch.where(enc[:, None], self.enc.expand(b, -1), self.full.expand(b, -1))
            out = self.model(x, condition=cond)
            x_hat = out["x_hat"].clamp(0, 1)
            bpp = self.rate_loss(out["likelihoods"], b * x.shape[-2] * x.shape[-1])
            F.mse_loss(x_hat, x)  # their criterion's mse_loss (logged only)
            mse0, mse1 = F.mse_loss(x_hat[~enc], x[~enc]), F.mse_loss(x_hat[enc], x[enc])
            x_enc, x_ref, t_sub = x_hat[enc], x[enc], text[enc]
        clean = self._encode_image(x_ref)  # autograd on, though only used for the labels
        recon = self._encode_image(x_enc)
        closs = authors_closs(recon, t_sub, text, clean, self.stage)
        scale = self.lmbda * 255**2
        total = bpp + 0.5 * (scale * mse0 + scale * mse1) + self.l_clip * closs
        self.optimizer.zero_grad()
        self.aux_optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if self.stage == 1:
            aux = self.model.base.aux_loss()
            aux.backward()
            self.aux_optimizer.step()
        return float(total.detach())


# ------------------------------------------------------------------ the project's step
class ProjectStep:
    def __init__(self, model, target, stage: int, schedule: str, args, device: torch.device, out_dir: str):
        from psic_adapter.training import TrainConfig, Trainer

        cfg = TrainConfig(stage=stage, adapter_only=args.adapter_only and stage == 2, schedule=schedule,
                          steps=10**6, batch_size=args.batch, crop=args.crop, compile=args.compile,
                          seed=args.seed, **({} if args.guard_weight is None else {"guard_weight": args.guard_weight}))
        self.trainer = Trainer(model, target, [], cfg, out_dir, quality=args.quality, device=str(device),
                               progress=False)

    def step(self, batch) -> float:
        return self.trainer.step(batch)["loss"]


class ProjectLatentStep:
    """The project's adapter-only fit (the default recipe's path): the frozen encoder's latents are computed
    once per training image (here: once per benchmark batch, untimed, as LatentViews does before the first
    step), the full version is the base decode (nothing of it to train), bf16 and channels_last where the
    CPU has AMX. Each step decodes the same number of images as the naive step."""

    def __init__(self, model, target, args, device: torch.device, out_dir: str):
        from psic_adapter.training import TrainConfig, Trainer

        cfg = TrainConfig(stage=2, adapter_only=True, steps=10**6, batch_size=args.batch, crop=args.crop,
                          compile=args.compile, seed=args.seed, guard_weight=0.0)
        self.trainer = Trainer(model, target, [], cfg, out_dir, quality=args.quality, device=str(device),
                               progress=False)
        self.latents: Dict[int, torch.Tensor] = {}

    def step(self, batch) -> float:
        key = id(batch)
        if key not in self.latents:  # once per image, outside the timed loop (see warm-up)
            with torch.no_grad():
                self.latents[key] = self.trainer.model.analyze(batch["image"].to(self.trainer.device))["y_hat"]
        return self.trainer.step({**batch, "y_hat": self.latents[key]})["loss"]


# ------------------------------------------------------------------ timing
def run_stage(stage: int, args, device: torch.device, batches: List[Dict], codec) -> Dict:
    from psic_adapter.adapter import PSICConfig, wrap_model
    from psic_adapter.training import COMPRESSAI_LAMBDAS

    lmbda = COMPRESSAI_LAMBDAS.get(args.quality, 0.0067)
    tmp = tempfile.mkdtemp(prefix="psic-bench-")

    # where the decoder trains (stage 1; stage 2 without --adapter-only) the full version is a trained condition:
    # the trainer refuses an adapter built for the base decode there
    decoder_trains = stage == 1 or not args.adapter_only

    def model(full_version: str = "condition" if decoder_trains else "base"):
        return wrap_model(copy.deepcopy(codec), PSICConfig(full_version=full_version), key=KEY)

    contenders: Dict[str, Callable] = {}
    contenders["naive"] = NaiveStep(model(), build_target(args, device), stage, lmbda, device,
                                    clip_dtype=args.naive_clip_dtype).step
    contenders["project-alternate"] = ProjectStep(model(), build_target(args, device), stage, "alternate", args,
                                                  device, tmp).step
    if stage == 2:
        latent = ProjectLatentStep(model("base"), build_target(args, device), args, device, tmp)
        for b in batches:  # the encoder runs once per training image, before training (untimed)
            with torch.no_grad():
                latent.latents[id(b)] = latent.trainer.model.analyze(b["image"].to(device))["y_hat"]
        contenders["project-adapter-only"] = latent.step
    if not args.no_joint:
        contenders["naive-2pass"] = NaiveStep(model(), build_target(args, device), stage, lmbda, device,
                                              two_pass=True, clip_dtype=args.naive_clip_dtype).step
        contenders["project-joint"] = ProjectStep(model(), build_target(args, device), stage, "joint", args,
                                                  device, tmp).step
    names = list(contenders)
    for name in names:  # warm-up (and the project's text cache, compile)
        for i in range(args.warmup):
            contenders[name](batches[i % len(batches)])
    _sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    losses: Dict[str, List[float]] = {n: [] for n in names}
    # steps go in pairs so that an alternating project run does as many full as encrypted steps
    for r in range(args.steps):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            batch = batches[r % len(batches)]
            _sync(device)
            t0 = time.perf_counter()
            losses[name].append(contenders[name](batch))
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    res = {"stage": stage, "contenders": {}}
    for n in names:
        total = sum(times[n])
        res["contenders"][n] = {
            "images_per_s": args.batch * len(times[n]) / total,
            "s_per_step": total / len(times[n]),
            "step_times": times[n],
            "last_loss": losses[n][-1],
        }
    c = res["contenders"]
    res["ratio_alternate_vs_naive"] = c["project-alternate"]["images_per_s"] / c["naive"]["images_per_s"]
    if "project-adapter-only" in c:
        res["ratio_adapter_only_vs_naive"] = c["project-adapter-only"]["images_per_s"] / c["naive"]["images_per_s"]
    if "project-joint" in c:
        res["ratio_joint_vs_naive_2pass"] = c["project-joint"]["images_per_s"] / c["naive-2pass"]["images_per_s"]
    if args.profile:
        res["profile"] = profile_once(contenders, batches[0], device)
    return res


def profile_once(contenders, batch, device) -> Dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {}
    for name, fn in contenders.items():
        with profile(activities=acts) as prof:
            fn(batch)
            fn(batch)  # both phases of an alternating run
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        out[name] = prof.key_averages().table(sort_by=key, row_limit=15)
    return out


DESCRIPTIONS = {
    "naive": "authors: 1 fwd/step, mode per image",
    "project-alternate": "Trainer.step, alternate (default)",
    "naive-2pass": "2 whole fwd/step (full + encrypted)",
    "project-joint": "Trainer.step, joint (both versions)",
    "project-adapter-only": "adapter-only fit: latents once, bf16",
}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed steps per contender (even: full + encrypted pairs)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per contender (default 2, 4 with --compile)")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--codec", default="bmshj2018-hyperprior")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--checkpoint", nargs="+", default=None,
                   help="codec weights; 'shipped' (the default for bmshj2018-hyperprior quality 3) is the codec in "
                        "the package; other codecs without --checkpoint get random weights (same speed)")
    p.add_argument("--target", default=None,
                   help="target spec (default: clip:ViT-B-32 with random weights: the paper's target at its real "
                        "size and speed, no download); 'tiny-clip' for a smoke run")
    p.add_argument("--target-weights", default=None, help="default 'random' for clip:* (same speed, no download)")
    p.add_argument("--adapter-only", action="store_true", help="project stage 2 trains the adapter alone")
    p.add_argument("--compile", action="store_true", help="torch.compile in the project's step")
    p.add_argument("--guard-weight", type=float, default=0.0,
                   help="the project's semantic guard weight (default 0: the paper's L2 alone, the same work as the "
                        "naive step; the guard is an extra objective, pass 1 to time its cost)")
    p.add_argument("--naive-clip-dtype", default="fp32", choices=["fp32", "fp16"],
                   help="the naive step's CLIP dtype (clip.load gives fp16 on a GPU)")
    p.add_argument("--no-joint", action="store_true", help="skip the joint / 2-pass pair")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of each contender")
    args = parse(p, argv)  # + --threads, --seed, --json

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.checkpoint is None and args.codec == "bmshj2018-hyperprior" and args.quality == 3:
        args.checkpoint = "shipped"
    if args.target is None:
        args.target = "clip:ViT-B-32"
    if args.target.startswith("clip:") and args.target_weights is None and "@" not in args.target:
        args.target_weights = "random"
    if args.steps % 2:
        args.steps += 1
    if args.warmup is None:
        args.warmup = 4 if args.compile else 2

    codec = build_codec(args)
    batches = make_batches(args, max(args.steps, args.warmup, 2))
    results = []
    for stage in args.stages:
        res = run_stage(stage, args, device, batches, codec)
        results.append(res)
        print(f"\nstage {stage}: batch {args.batch}, crop {args.crop}, {args.steps} timed steps each, {device}, "
              f"target {args.target}, codec {args.codec} q{args.quality}"
              f"{' (checkpoint)' if args.checkpoint else ' (random)'}")
        for name, c in res["contenders"].items():
            print(f"  {name:18s} {DESCRIPTIONS[name]:38s} {c['images_per_s']:8.2f} img/s  "
                  f"{c['s_per_step']:7.3f} s/step")
        print(f"  ratio project-alternate / naive      : {res['ratio_alternate_vs_naive']:.2f}")
        if "ratio_adapter_only_vs_naive" in res:
            print(f"  ratio project-adapter-only / naive   : {res['ratio_adapter_only_vs_naive']:.2f}")
        if "ratio_joint_vs_naive_2pass" in res:
            print(f"  ratio project-joint / naive-2pass    : {res['ratio_joint_vs_naive_2pass']:.2f}")
        for name, table in res.get("profile", {}).items():
            print(f"\n--- profile: {name} (2 steps)\n{table}")
    if args.json:
        meta = {"device": str(device), "torch": torch.__version__, "platform": platform.platform(),
                "threads": torch.get_num_threads(), "args": vars(args)}
        if device.type == "cuda":
            meta["gpu"] = torch.cuda.get_device_name(device)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
