"""``psic demo``: the whole job end to end, offline, on the CPU, in minutes.

1. **A codec**: ``--checkpoint`` when given; else the pretrained codec shipped
   with psic-adapter (bmshj2018-hyperprior, quality 3); ``codec="zoo"``
   downloads CompressAI's instead.
2. **The shipped adapter** (with the shipped codec): fitted with the default
   recipe on 200 real photos; its key ships beside it, so it is a demonstration,
   not a protection. One photo is compressed to
   ``OUT/example_shipped_adapter.psic`` and decoded twice (no key:
   ``..._encrypted.png``; the key: ``..._full.png``); compressed again with the
   owner's per-photo shift (``psic compress --shift-for``: ``..._shift.psic``,
   decoded to ``..._shift_encrypted.png``), the target's answer and margin on each
   decoding side by side; and the adapter is
   measured on every bundled sample photo (twenty with scikit-learn installed,
   eighteen without), none of which it trained on.
3. **Your own adapter**: a fresh owner key (``OUT/owner.key``, mode 600) and an
   adapter fitted with the default recipe on the bundled training photos (six,
   four without scikit-learn), written to ``OUT/example.psic`` and decoded twice
   the same way, then measured on the fourteen photos it never saw (a few minutes of fitting
   on six photos shows the fit working, not the protection: that is part 1's job).
4. **A report**: ``OUT/report/report.html``, and the numbers as a table: every ASR with
   its count, its Wilson 95 % interval and whether it can be told from the control
   (:data:`psic_adapter.eval.table.RULE`).

Before each long part it says how long it will take on this CPU: the measurements from one
decode timed here, the fit from its first steps.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import OverwriteError, PSICError
from .types import PathLike
from .options import opt


@dataclass
class DemoConfig:
    """What ``psic demo`` does (each field's help is its flag's, so the command and the API share a default)."""

    codec: str = opt("bmshj2018-hyperprior", "the codec's registry name (this one at quality 3 ships with "
                                             "psic-adapter), or 'zoo' to download CompressAI's bmshj2018-hyperprior")
    quality: int = opt(3, "the codec's quality")
    checkpoint: Optional[Sequence[str]] = opt(None, "use these codec weights instead of the shipped ones",
                                              metavar="FILE")
    zoo: bool = opt(False, "download CompressAI's codec instead of the shipped one (psic demo: --codec zoo)",
                    cli=False)
    shipped_adapter: bool = opt(True, "show the adapter shipped with psic-adapter", cli=False)
    fit: bool = opt(True, "show the shipped adapter only (no fit)", flag="--no-fit")
    shift: bool = opt(True, "skip the owner's per-photo shift on the example photo (psic compress --shift-for; "
                            "about a minute)", flag="--no-shift")
    shift_steps: int = opt(40, "the per-photo shift search's steps at most", cli=False)
    steps: int = opt(100, "steps of your own adapter's fit (minutes; the shipped adapter took 2600 and three "
                          "calibrations)")
    batch: int = opt(8, "images per step of the fit", cli=False)
    scales: Sequence[str] = opt(("long512", "crops"), "the scales measured", cli=False)
    crops: int = opt(48, "crops per measurement", cli=False)
    shipped_photos: str = opt("all", "the sample photos the shipped adapter is measured on (it trained on none)",
                              cli=False)
    fit_photos: str = opt("heldout", "those your adapter is measured on (every one it did not train on)", cli=False)
    probe_steps: int = opt(3, "the fit's first steps, timed for its estimate", cli=False)
    perturbations: Sequence[str] = opt(("jpeg75", "resize0.5", "codec"), "what served images meet", cli=False)
    wrong_keys: int = opt(10, "wrong keys tried on each adapter", cli=False)
    target: str = opt("efficientnet-lite0", "the target the adapters mislead", cli=False)
    seed: int = opt(0, "seed of the measurement and the fit", cli=False)
    extra: Dict[str, Any] = field(default_factory=dict)  # more TrainConfig settings of the fit


def _say(msg: str) -> None:
    print(f"[psic demo] {msg}", flush=True)


def cpu_description() -> str:
    """This machine's CPU in a line: its model, the threads torch uses, and whether it has bf16 units (then the
    fit runs in bf16 autocast, faster a step than fp32: how much, docs/benchmarks.md)."""
    import platform

    import torch

    from .training.loop import cpu_has_bf16_units

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    bf16 = cpu_has_bf16_units()
    threads = torch.get_num_threads()
    return (f"{model or 'unknown CPU'}, {threads} thread{'s' if threads != 1 else ''}, "
            + ("bf16 units (the fit runs in bf16 autocast)" if bf16 else "no bf16 units (the fit runs in fp32)"))


class StepClock:
    """Times a trainer's first steps and says how long its fit will take (wraps ``trainer.step``)."""

    def __init__(self, trainer, steps: int, probe: int = 3, say=None):
        self.inner, self.steps, self.probe = trainer.step, int(steps), max(1, int(probe))
        self.say = say or _say
        self.times: List[float] = []
        trainer.step = self

    def __call__(self, batch):
        t = time.perf_counter()
        out = self.inner(batch)
        self.times.append(time.perf_counter() - t)
        if len(self.times) == min(self.probe, self.steps) and self.steps > len(self.times):
            from .eval.runner import minutes

            # the first step warms up: the later ones set the pace
            pace = sorted(self.times[1:] or self.times)[len(self.times[1:] or self.times) // 2]
            left = pace * (self.steps - len(self.times))
            self.say(f"the fit's first {len(self.times)} steps: {pace:.1f} s a step on this CPU -> the other "
                     f"{self.steps - len(self.times)} steps take {minutes(left)}")
        return out


def get_codec(cfg: DemoConfig):
    """(codec, how it was obtained)."""
    from .codec import SHIPPED_CODEC, load_codec
    from .codec.build import load_shipped_codec

    if cfg.checkpoint:
        codec = load_codec(cfg.codec, cfg.quality, checkpoint=cfg.checkpoint)
        return codec, f"{cfg.codec} quality {cfg.quality} from {', '.join(map(str, cfg.checkpoint))}"
    if cfg.zoo:
        return load_codec(cfg.codec, cfg.quality, pretrained=True), f"CompressAI zoo {cfg.codec} quality {cfg.quality}"
    if (cfg.codec, cfg.quality) != (SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"]):
        raise PSICError(f"psic-adapter ships {SHIPPED_CODEC['name']} quality {SHIPPED_CODEC['quality']} only: for "
                        f"{cfg.codec} quality {cfg.quality} give --checkpoint FILE or --codec zoo")
    return load_shipped_codec(), (f"the codec shipped with psic-adapter ({SHIPPED_CODEC['name']} quality "
                                  f"{SHIPPED_CODEC['quality']}, a real trained model; offline)")


def run_demo(out_dir: PathLike = "psic-demo", config: Optional[DemoConfig] = None, force: bool = False) -> Dict[str, Any]:
    """Run the demo; returns the results and the paths written. A short script over :mod:`psic_adapter.workflows`."""
    import torch

    from . import workflows as wf
    from .adapter import fingerprint_matches, load_adapter
    from .adapter.keys import generate_key, read_key_file, write_key_file
    from .adapter.pretrained import DEMO_ADAPTER, DEMO_KEY, PublicKeyWarning
    from .bitstream.images import save_image
    from .data import SamplePhotos, sample_photo
    from .eval.config import EvalConfig
    from .eval.protocol import PSICDecoder
    from .eval.report import write_report
    from .eval.runner import minutes
    from .targets import build_target

    cfg = config or DemoConfig()
    if cfg.shift:  # its settings checked before anything loads or is written
        from .training.shift_search import ShiftSearch, check_search_target

        check_search_target(cfg.target)
        ShiftSearch(None, steps=cfg.shift_steps)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OverwriteError(f"{out} exists and is not empty (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)

    _say(f"CPU: {cpu_description()}")
    codec, source = get_codec(cfg)
    _say(f"codec: {source}")
    target = build_target(cfg.target)
    _say(f"target: {target.name} (real ImageNet weights, offline)")
    photo, _ = sample_photo("grace_hopper")
    example = save_image(photo, out / "example.png", force=True)
    eval_cfg = EvalConfig(scales=list(cfg.scales), crops=cfg.crops, wrong_keys=cfg.wrong_keys, attack_steps=0,
                          perturbations=tuple(cfg.perturbations), robustness_scales=[cfg.scales[0]], grid_images=3,
                          seed=cfg.seed)
    runs = []
    answers: Dict[str, List[Dict[str, Any]]] = {}

    def measure(model, key, name: str, split: str, log=None) -> None:
        samples = wf.evaluation_samples(["samples"], seed=cfg.seed, split=split)
        _say(f"measuring {name} on {len(samples)} sample photos it never trained on")
        runs.append(wf.evaluate(PSICDecoder(model, key), target, samples, eval_cfg, name, log=log, progress=False,
                                meta={"data": [f"samples, {split}"], "key_given": True}, say=_say,
                                show=lambda text: print(text, flush=True)))

    def with_shift(model, stem: str) -> None:
        from .training.shift_search import ShiftSearch

        _say(f"the owner's per-photo shift on the same photo (psic compress --shift-for {target.name}): chosen "
             f"against the target while compressing, up to {cfg.shift_steps} steps through the decoder, at the "
             "adapter's own cost on this photo; stored in the file, the codec's bytes unchanged (seconds to a "
             "minute on a CPU)")
        psic = out / f"{stem}_shift.psic"
        enc = wf.protect_file(example, psic, model=model, codec=cfg.codec, quality=cfg.quality, force=True,
                              shift_search=ShiftSearch(target, steps=cfg.shift_steps))
        seen = enc.shift_search
        _say(f"{psic.name}: {seen['steps']} steps, strength {seen['strength']:.4f}, "
             f"{seen['drop_db']:.2f} dB under the base decode (the adapter's own {seen['budget_db']:.2f})")
        wf.open_file(psic, out / f"{stem}_shift_encrypted.png", model=model, force=True)
        rows = [("full version (key)", f"{stem}_full.png"), ("encrypted (no key)", f"{stem}_encrypted.png"),
                ("encrypted, with the shift", f"{stem}_shift_encrypted.png")]
        answers[stem] = example_answers(target, example, [(name, out / f) for name, f in rows])
        print(answers_text(target, answers[stem]), flush=True)

    def two_decodings(model, key, stem: str) -> None:
        psic = out / f"{stem}.psic"
        enc = wf.protect_file(example, psic, model=model, codec=cfg.codec, quality=cfg.quality, force=True)
        wf.open_file(psic, out / f"{stem}_encrypted.png", model=model, force=True)
        wf.open_file(psic, out / f"{stem}_full.png", model=model, key=key, force=True)
        _say(f"{psic.name}: {enc.bpp:.3f} bpp, one bitstream -> {stem}_encrypted.png (no key), {stem}_full.png (key)")

    # 1. the shipped adapter, where it fits this codec
    if cfg.shipped_adapter and DEMO_ADAPTER.is_dir() and fingerprint_matches(codec, DEMO_ADAPTER):
        _say("part 1: the adapter shipped with psic-adapter (the default recipe, 200 real photos; its key ships "
             "with it: a demonstration, not a protection)")
        demo_key = read_key_file(DEMO_KEY)
        with warnings.catch_warnings():  # the demo says it in its own words above
            warnings.simplefilter("ignore", PublicKeyWarning)
            shipped = load_adapter(codec, DEMO_ADAPTER)
        two_decodings(shipped, demo_key, "example_shipped_adapter")
        if cfg.shift:
            with_shift(shipped, "example_shipped_adapter")
        measure(shipped, demo_key, "shipped adapter", cfg.shipped_photos)
        shipped.unwrap()
    elif cfg.shipped_adapter and DEMO_ADAPTER.is_dir():
        _say("the shipped adapter fits the shipped codec only: skipped for this codec (and with it the per-photo "
             "shift)")

    # 2. a fresh adapter with the user's own key
    if cfg.fit:
        key = generate_key()
        key_path = write_key_file(out / "owner.key", key, force=True)
        _say(f"part 2: your own adapter: a new owner key in {key_path} (keep it: it decodes the full version)")
        recipe = wf.Recipe.named("robust", **{"steps": cfg.steps, "batch_size": cfg.batch, "seed": cfg.seed,
                                              "log_every": 10, "train_sizes": (384, 512), **cfg.extra})
        data = SamplePhotos("train")
        _say(f"fitting it: the robust recipe, {recipe.train.steps} steps on the {len(data)} bundled training photos "
             f"against {target.name} (enough to see the fit work, not to protect; the shipped adapter "
             f"took 2600 steps on 200 photos and three calibrations). Its first steps are timed for an estimate; "
             f"docs/benchmarks.md has a step's time on other CPUs")
        t_fit = time.perf_counter()
        res = wf.fit(recipe, wf.BaseCodec(codec, cfg.codec, cfg.quality), target, data, out / "adapter-run",
                     key=key, device="cpu", force=True,
                     info={"codec": cfg.codec, "quality": cfg.quality, "codec_source": source,
                           "data": "samples (train photos)"},
                     prepare=lambda trainer: StepClock(trainer, recipe.train.steps, cfg.probe_steps))
        _say(f"the fit took {minutes(time.perf_counter() - t_fit)}")
        model = load_adapter(res["model"].unwrap(), res["adapter"])
        two_decodings(model, key, "example")
        measure(model, key, "your adapter", cfg.fit_photos, log=out / "adapter-run" / "log.jsonl")

    if not runs:
        raise PSICError("nothing to show: no shipped adapter for this codec and --no-fit")
    taken = (time.perf_counter() - t_start) / 60
    html = write_report(out / "report", runs, title="psic demo", force=True)
    results, names = [r.result for r in runs], [r.name for r in runs]
    print("\n" + closing_text(results, names), flush=True)
    _say(f"report: {html}  ({taken:.1f} min on {cpu_description()})")
    return {"report": str(html), "runs": results, "minutes": taken, "codec": source, "answers": answers}


def example_answers(target, original: PathLike, decodes) -> List[Dict[str, Any]]:
    """What ``target`` answers on each decoded image file of ``decodes`` (``(name, path)``, the first the full
    version): its class, the margin of the full version's answer (that class's logit minus the best other one;
    below 0: the answer changed) and the PSNR against ``original``, read back from the files a user sees."""
    import torch

    from .bitstream.images import load_image
    from .eval.metrics import psnr
    from .training.shift_search import margin

    x, _ = load_image(original)
    rows, label = [], None
    with torch.no_grad():
        for name, path in decodes:
            y, _ = load_image(path)
            logits = target.logits(y)
            top = int(logits.argmax(dim=1)[0])
            label = top if label is None else label
            rows.append({"decode": name, "file": Path(path).name, "class": top, "margin": float(margin(logits, label)),
                         "psnr": float(psnr(y, x)[0])})
    return rows


def answers_text(target, rows: List[Dict[str, Any]]) -> str:
    """:func:`example_answers` as lines: one per decoding."""
    names = target.class_names or []
    say = lambda i: names[i].split(",")[0] if i < len(names) else f"class {i}"  # noqa: E731
    lines = [f"{target.name} on the example photo (margin: its logit for the full version's answer minus the best "
             "other; below 0 the answer changed):"]
    width = max(len(r["decode"]) for r in rows)
    for r in rows:
        lines.append(f"  {r['decode']:<{width}}  {say(r['class']):<24}  margin {r['margin']:+6.2f}  "
                     f"{r['psnr']:5.2f} dB  {r['file']}")
    return "\n".join(lines)


def closing_text(results, names) -> str:
    """The demo's last words: the runs side by side, each ASR with its count and interval, whether it can be told
    from its control and the two runs from each other, and how to read them."""
    from .eval import table

    lines = [table.runs_table(results, names), ""]
    lines += [f"- {x}" for x in table.compare_runs(results, names)]
    right = [r.main.classification.n_base_right for r in results if r.main.classification.n_base_right]
    lo, hi = (100 / max(right), 100 / min(right)) if right else (0, 0)
    moves = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f} to {hi:.0f}"
    flip = f" Here one flip moves a {results[0].main.scale} ASR by {moves} points." if right else ""
    lines += ["", "ASR (k/n): of the n images the target gets right from the base decode, the k the encrypted version "
              "flips; control: the same for noise of the same energy; [95% CI]: the Wilson score interval. "
              f"Read: {table.RULE}.{flip} docs/results.md measures the recipe on more photos."]
    return "\n".join(lines)
