"""The jobs, end to end: one home for assembling the parts, which ``psic`` and the demo call.

Each command of the command line is *parse, one call here, print*; ``psic demo`` is a short
script over the same calls. What they assemble:

* :func:`base_codec` -- the codec for a name and quality, a checkpoint, or an adapter (the one it fits);
  :func:`codec_for_file` -- the codec a ``.psic`` file was made with;
* :class:`Recipe` -- a named recipe's two configs, the adapter's (:class:`~psic_adapter.adapter.PSICConfig`)
  and training's (:class:`~psic_adapter.training.TrainConfig`), explicit settings winning;
* :func:`fit` (:func:`train`: from specs) -- an adapter fitted against a target;
* :func:`evaluate` (:func:`evaluate_adapters`, :func:`evaluate_task`: from specs) -- one method measured;
* :func:`protect_file` / :func:`open_file` -- an image to a ``.psic`` file, and back (encrypted or full).

Library modules stay below this one: none of them imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import ConfigError
from .types import PathLike

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ codecs
class BaseCodec(NamedTuple):
    """A codec and how a ``.psic`` header names it."""

    module: Any
    name: Optional[str]
    quality: Optional[int]


def wants_shipped(checkpoint) -> bool:
    """Whether ``checkpoint`` names the codec that ships with psic-adapter (``["shipped"]``)."""
    from .codec.shipped import is_shipped_checkpoint

    if isinstance(checkpoint, (str, Path)):
        checkpoint = [checkpoint]
    return bool(checkpoint) and len(checkpoint) == 1 and is_shipped_checkpoint(checkpoint[0])


def codec_name_and_quality(name: Optional[str], quality: Optional[int], checkpoint=None) -> Tuple[str, Optional[int]]:
    """(name, quality) as given; the shipped codec's when ``checkpoint`` is ``shipped`` and no name is given."""
    from .codec import SHIPPED_CODEC

    if name:
        return name, quality
    if wants_shipped(checkpoint):
        return SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"]
    raise ConfigError("give --codec NAME (and --quality), --checkpoint shipped for the codec psic-adapter ships, "
                      "or --adapter DIR to use the codec the adapter fits")


def load_codec(name: str, quality, checkpoint, device: str = "cpu"):
    """A codec: ``checkpoint`` ``shipped``, checkpoint files, or (None) the zoo's weights (a download)."""
    from .codec import load_codec as load

    return load(name, quality=quality, checkpoint=checkpoint, pretrained=checkpoint is None, device=device)


def base_codec(name: Optional[str] = None, quality: Optional[int] = None, checkpoint=None, *,
               adapter: Optional[PathLike] = None, from_scratch: bool = False, device: str = "cpu") -> BaseCodec:
    """The codec to work with: with ``adapter`` and no ``name``, the codec the adapter fits (``checkpoint`` a
    candidate, checked by fingerprint); else ``name``/``quality`` (the shipped codec's for ``checkpoint``
    ``shipped``) from ``checkpoint``, the zoo, or random weights (``from_scratch``)."""
    if adapter and not name and not from_scratch:
        from .adapter import codec_for_adapter
        from .adapter.config import PSICConfig
        from .adapter.pretrained import resolve_adapter_dir

        info = PSICConfig.load(resolve_adapter_dir(adapter)).base_model
        codec = codec_for_adapter(adapter, checkpoint, device=device)
        return BaseCodec(codec, info.get("architecture"), info.get("quality"))
    name, quality = codec_name_and_quality(name, quality, checkpoint)
    if from_scratch:
        from .codec import build_codec, prepare_for_coding

        if checkpoint:
            raise ConfigError("--from-scratch and --checkpoint exclude each other")
        return BaseCodec(prepare_for_coding(build_codec(name, quality)).to(device), name, quality)
    return BaseCodec(load_codec(name, quality, checkpoint, device=device), name, quality)


def codec_for_file(header, checkpoint=None, adapter: Optional[PathLike] = None):
    """The base codec a ``.psic`` file was made with: with an adapter, the codec it fits (a codec.safetensors
    beside it, ``checkpoint``, or the shipped codec: the first whose fingerprint is the adapter's); else
    ``checkpoint``; the shipped codec when it is the file's; else the zoo's (a download)."""
    from .codec import SHIPPED_CODEC

    if adapter:
        from .adapter import codec_for_adapter

        return codec_for_adapter(adapter, checkpoint)
    if not checkpoint and SHIPPED_CODEC["fingerprint"] and header.base_fingerprint == SHIPPED_CODEC["fingerprint"][:32]:
        checkpoint = ["shipped"]
    return load_codec(header.codec, header.quality, checkpoint)


def with_adapter(codec, adapter: Optional[PathLike], key=None, trainable: bool = False):
    """``codec`` wrapped with the adapter at ``adapter`` (a folder or hub id), or ``codec`` itself without one."""
    if not adapter:
        return codec
    from .adapter import load_adapter

    return load_adapter(codec, adapter, key=key, is_trainable=trainable)


def device_of(name: str) -> str:
    """``auto``: CUDA where there is one, else the CPU; any other name as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ------------------------------------------------------------------ .psic files
def protect_file(image: PathLike, out: PathLike, *, adapter: Optional[PathLike] = None, codec: Optional[str] = None,
                 quality: Optional[int] = None, checkpoint=None, model=None, force: bool = False, inputs=(),
                 shift_search=None):
    """Compress ``image`` into the ``.psic`` file ``out`` (the base codec's bitstream; the adapter's fingerprint
    recorded). The codec: ``model`` (a codec or wrapped model, named ``codec``/``quality``), or
    :func:`base_codec` of the other arguments, wrapped with ``adapter``. ``shift_search``: the owner's per-photo
    shift is chosen and stored (:class:`~psic_adapter.training.shift_search.ShiftSearch`). Returns the
    :class:`~psic_adapter.bitstream.coding.EncodeResult`."""
    from .bitstream.coding import encode_file

    if model is None:
        base = base_codec(codec, quality, checkpoint, adapter=None if codec else adapter)
        model, codec, quality = with_adapter(base.module, adapter), base.name, base.quality
    return encode_file(image, out, model, codec_name=codec, quality=quality, force=force, inputs=inputs,
                       shift_search=shift_search)


def open_file(psic: PathLike, out: PathLike, *, adapter: Optional[PathLike] = None, key=None, plain: bool = False,
              checkpoint=None, model=None, force: bool = False, inputs=(), allow_format_1: bool = False):
    """Decode the ``.psic`` file ``psic`` into the image ``out``: the encrypted version, the full one with the
    owner's ``key``, or the base codec's decode (``plain``). The codec: ``model``, or the one the file (or
    ``adapter``) names. ``out`` is checked before any codec is loaded or key read (``key`` may be a function
    that reads it, called then). Returns ``(result, header)``."""
    from .bitstream import container
    from .bitstream.coding import decode_file
    from .fileio import check_output

    check_output(out, force=force, inputs=inputs)
    _, header, _ = container.read(psic)
    if model is None:
        codec = codec_for_file(header, checkpoint, adapter)  # with plain too: the adapter's codec
        model = codec if plain else with_adapter(codec, adapter)
    if callable(key):
        key = key()
    res = decode_file(psic, out, model, key=key, plain=plain, force=force, inputs=inputs,
                      allow_format_1=allow_format_1)
    return res, header


# ------------------------------------------------------------------ fitting
@dataclass
class Recipe:
    """A named recipe's settings for a run: the adapter's (``preset``, ``modulation``) and training's
    (:class:`~psic_adapter.training.TrainConfig`). Build one with :meth:`named`."""

    name: str
    train: Any  # TrainConfig
    preset: str = "paper"
    modulation: str = "bias"
    spatial_rank: Optional[int] = None
    spatial_context: Optional[int] = None
    #: the adapter settings given explicitly (to :meth:`named`): they shape a new adapter, so :func:`fit` refuses
    #: them beside an adapter to go on fitting, which keeps its own
    shape_given: Tuple[str, ...] = ()

    @classmethod
    def named(cls, name: Optional[str] = None, preset: Optional[str] = None, modulation: Optional[str] = None,
              spatial_rank: Optional[int] = None, spatial_context: Optional[int] = None, **train) -> "Recipe":
        """``name`` (default: ``robust`` for stage-2 adapter-only fitting, else ``paper``) with explicit settings
        winning: ``preset``/``modulation``/``spatial_rank``/``spatial_context`` for a new adapter, ``train`` for
        TrainConfig's fields (None: not given)."""
        from .training import TrainConfig, default_recipe
        from .training.config import recipe_settings

        train = {k: v for k, v in train.items() if v is not None}
        name = name or default_recipe(train.get("stage", 2), bool(train.get("adapter_only")))
        adapter = recipe_settings(name)["adapter"]
        given = tuple(n for n, v in (("preset", preset), ("modulation", modulation), ("spatial_rank", spatial_rank),
                                     ("spatial_context", spatial_context)) if v is not None)
        modulation = modulation or adapter.get("modulation", "bias")
        if spatial_rank is None and modulation == "spatial":  # the recipe's branch width, where there is a branch
            spatial_rank = adapter.get("spatial_rank")
        return cls(name, TrainConfig.from_recipe(name, **train), preset or adapter.get("preset", "paper"),
                   modulation, spatial_rank, spatial_context, given)

    def adapter_config(self, public: bool = False):
        """A new adapter's :class:`~psic_adapter.adapter.PSICConfig` (``public``: the paper's mode bit, no key);
        its ``full_version`` the training's (``"condition"`` where the decoder trains, else ``"base"``)."""
        from .adapter import PSICConfig

        return PSICConfig(preset=self.preset, modulation=self.modulation, spatial_rank=self.spatial_rank,
                          spatial_context=self.spatial_context,
                          condition="public" if public else "key",
                          full_version=self.train.adapter_full_version)


def _is_samples(spec) -> bool:
    return str(spec).strip().lower() == "samples"


def whole_training_photos(spec, seed: int = 0):
    """Whole photos to fit on (training, calibration): a folder's or CSV's every photo; for ``samples`` the
    training photos only (the test ones are ``psic eval``'s)."""
    from .data import SamplePhotos, build_dataset

    return SamplePhotos("train", seed=seed) if _is_samples(spec) else build_dataset(spec, crop=None, split="all",
                                                                                    seed=seed)


def training_data(spec, config, split: str = "train"):
    """The dataset a run trains on: for ``views="scale"`` whole images (:func:`whole_training_photos`), else
    crops of ``config.crop``."""
    from .data import build_dataset, repeats_for

    if config.views == "scale":
        return whole_training_photos(spec, seed=config.seed)
    repeats = repeats_for(config.batch_size) if _is_samples(spec) else 1
    return build_dataset(spec, crop=config.crop, split=split, seed=config.seed, repeats=repeats)


def refuse_reshaping(recipe: Recipe, adapter: Optional[PathLike]) -> None:
    """Settings that shape a new adapter, given beside an adapter to go on fitting (which keeps its own shape:
    they were silently ignored before): a one-line error."""
    if adapter and recipe.shape_given:
        flags = ", ".join("--" + n.replace("_", "-") for n in recipe.shape_given)
        raise ConfigError(f"{flags} shape a new adapter, and {adapter} has its own: leave them out to go on fitting "
                          "it, or leave out --adapter to fit a new one")


def fit(recipe: Recipe, codec: BaseCodec, target, data, out: PathLike, *, key=None, public: bool = False,
        adapter: Optional[PathLike] = None, device: str = "cpu", resume: bool = False, force: bool = False,
        info: Optional[Dict[str, Any]] = None, prepare: Optional[Callable[[Any], None]] = None) -> Dict[str, Any]:
    """Fit an adapter on ``codec`` against ``target`` (a built target) with ``recipe``; write it to ``out``.

    The adapter: ``adapter`` (a folder to go on fitting, with its ``key``), the checkpoint's when resuming, or a
    new one from the recipe. ``data``: a dataset, or a spec (:func:`training_data`). ``prepare(trainer)`` runs
    before training (the demo times the first steps). Returns :meth:`Trainer.train`'s dict with ``recipe``,
    ``is_main`` (False on the other ranks of a distributed run) and ``model`` (the wrapped codec it trained).
    """
    from .adapter import PSICModel, wrap_model
    from .data import build_dataset
    from .adapter.strength import check_trainable
    from .training import Trainer, checkpoint_adapter_config

    if key is None and not public:
        raise ConfigError("training needs the owner's key: --key-file F (make one with `psic keygen F`) or --key-env VAR")
    refuse_reshaping(recipe, adapter)
    cfg = recipe.train
    resume_config = checkpoint_adapter_config(out) if resume and not adapter else None
    if adapter:
        model = with_adapter(codec.module, adapter, key=key, trainable=True)
        if cfg.trains_decoder and model.config.full_version == "base":  # the Trainer refuses it too, in its words
            raise ConfigError(f"{adapter}: its full version is the base codec's decode (an adapter-only fit), and "
                              f"stage {cfg.stage}{'' if cfg.stage == 1 else ' without --adapter-only'} trains the "
                              "decoder: fit a new adapter (leave out --adapter), or add --adapter-only")
        check_trainable(model.config.strength)  # before the data is read (the Trainer refuses it too)
    elif resume_config is not None:  # the checkpoint's adapter (its salt), not a new one
        model = PSICModel(codec.module).add_adapter("default", resume_config, key=key)
    else:
        model = wrap_model(codec.module, recipe.adapter_config(public), key=key, quality=codec.quality)
    dataset = training_data(data, cfg) if isinstance(data, (str, Path)) else data
    val_dataset = None
    if cfg.val_every and cfg.val_data:  # held-out photos, whole ("samples": the test photos, never trained on)
        val_dataset = build_dataset(cfg.val_data, crop=None, split="test", seed=cfg.seed)
    trainer = Trainer(model, target, dataset, cfg, out, quality=codec.quality, device=device,
                      recipe={"recipe": recipe.name, **(info or {})}, val_dataset=val_dataset)
    if prepare is not None:
        prepare(trainer)
    result = trainer.train(resume=resume, force=force)
    return {**result, "recipe": recipe.name, "is_main": trainer.is_main, "model": model}


def train_device(name: str) -> str:
    """The device of a training run (``auto``: CUDA where there is one); under torchrun, this rank's GPU."""
    import os

    from .training import init_distributed_from_env

    device = device_of(name)
    if init_distributed_from_env(device) and device.startswith("cuda"):
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return device


def train(recipe: Recipe, *, target: str, data: str, out: PathLike, target_weights=None, codec: Optional[str] = None,
          quality: Optional[int] = None, checkpoint=None, from_scratch: bool = False,
          adapter: Optional[PathLike] = None, key=None, public: bool = False, device: str = "auto",
          resume: bool = False, force: bool = False) -> Dict[str, Any]:
    """``psic train``: :func:`fit` from specs (a codec name or checkpoint or adapter, a target spec, a data spec)."""
    from .targets import build_target

    if key is None and not public:  # before anything is loaded
        raise ConfigError("training needs the owner's key: --key-file F (make one with `psic keygen F`) or --key-env VAR")
    refuse_reshaping(recipe, adapter)  # likewise
    device = train_device(device)
    base = base_codec(codec, quality, checkpoint, adapter=adapter, from_scratch=from_scratch, device=device)
    judge = build_target(target, weights=target_weights, device=device)
    info = {"codec": base.name, "quality": base.quality, "target": target, "data": str(data),
            "from_scratch": bool(from_scratch),
            "codec_weights": "shipped" if checkpoint and checkpoint[0] == "shipped" else checkpoint}
    return fit(recipe, base, judge, data, out, key=key, public=public, adapter=adapter, device=device, resume=resume,
               force=force, info=info)


#: the rounds the measured recipe ran (docs/results.md, IS1y: 3100 steps from scratch, each round calibrated)
MEASURED_ROUNDS = (1000, 1000, 1100)
#: :func:`train_rounds` checkpoints each round this often where the recipe's ``checkpoint_every`` is 0, its
#: default (the robust recipe checkpoints only at its end, and a round cut off would start again)
ROUND_CHECKPOINT_EVERY = 100


def _fitted_steps(config) -> Optional[int]:
    """The steps an adapter's last fit ran (its config's ``training.steps_done``), or None."""
    done = (config.training or {}).get("steps_done")
    return done if isinstance(done, int) and not isinstance(done, bool) else None


def train_rounds(recipe: Recipe, rounds: Sequence[int], *, out: PathLike, data: str, checkpoint=None,
                 adapter: Optional[PathLike] = None, resume: bool = False, force: bool = False,
                 log: Say = _quiet, **train_kwargs) -> Dict[str, Any]:
    """``psic train --rounds``: fit an adapter in rounds, each calibrated and the next fitted from it.

    Round K is a run of ``rounds[K-1]`` steps in ``OUT/round-K/`` (``adapter/``, ``log.jsonl``, its checkpoint),
    started from ``adapter`` (K = 1) or from round K-1's calibrated adapter, then calibrated as ``psic calibrate``
    does by default (0.8 dB, 100 photos of ``data`` at 512 px) into ``OUT/round-K/adapter-cal/``: the last of those
    is the run's adapter. It is how the measured adapters were fitted (:data:`MEASURED_ROUNDS`). With ``resume``,
    a round whose calibrated adapter exists is kept, a fitted one only calibrated, one with a checkpoint resumed
    (each checked against the steps asked for and the adapter it starts from). Each round checkpoints every
    ``recipe.train.checkpoint_every`` steps, :data:`ROUND_CHECKPOINT_EVERY` where that is 0 (the recipe's default).
    ``train_kwargs``: :func:`train`'s.
    Returns ``{"rounds": [each round's result], "adapter": the last one}``."""
    import dataclasses
    import os

    from .adapter import PSICConfig
    from .adapter.config import CONFIG_NAME, WEIGHTS_NAME
    from .errors import PSICError
    from .training import checkpoint_adapter_config

    rounds = [int(n) for n in rounds]
    if not rounds or min(rounds) < 1:
        raise ConfigError("--rounds takes the steps of each round, each at least 1 (e.g. --rounds "
                          f"{' '.join(map(str, MEASURED_ROUNDS))})")
    if recipe.train.trains_decoder:
        raise ConfigError("--rounds fits an adapter alone, calibrated after each round: add --stage 2 --adapter-only")
    if train_kwargs.get("from_scratch"):
        raise ConfigError("--rounds fits an adapter onto a codec's weights (each round is calibrated on them): leave "
                          "out --from-scratch")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--rounds runs in one process: under torchrun, run each round with psic train and calibrate "
                          "it with psic calibrate")
    refuse_reshaping(recipe, adapter)
    if not recipe.train.checkpoint_every:  # a round cut off resumes from its last hundred steps, not from its start
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train,
                                                                       checkpoint_every=ROUND_CHECKPOINT_EVERY))
    results: List[Dict[str, Any]] = []
    start = adapter
    for k, steps in enumerate(rounds, 1):
        run = Path(out) / f"round-{k}"
        cal = run / "adapter-cal"
        name = f"round {k} of {len(rounds)}"
        for folder in (run, cal, run / "adapter"):  # each round is written inside OUT, never through a link
            if folder.is_symlink():
                raise ConfigError(f"{folder} is a link: --rounds writes each round inside {out}")
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"{folder} is a file, not {name}'s folder")
        fitted_before = resume and (run / "adapter" / CONFIG_NAME).is_file()
        kept = resume and all((cal / n).is_file() for n in (CONFIG_NAME, WEIGHTS_NAME))
        start_config = PSICConfig.load(start) if start is not None else None
        if kept or fitted_before:  # a round on disk: this run's (its steps, and the adapter it continues)
            folder = cal if kept else run / "adapter"
            config = PSICConfig.load(folder)
            if _fitted_steps(config) != steps:
                raise ConfigError(f"{folder} was fitted for {_fitted_steps(config)} steps, and --rounds asks "
                                  f"{steps} of {name}: resume with the same --rounds, or start over in another --out")
            if start_config is not None and config.salt != start_config.salt:
                raise ConfigError(f"{folder} was not fitted from {start} (another adapter: its salt differs): "
                                  "resume with the same --adapter, or start over in another --out")
        if kept:
            log(f"{name}: done before ({cal})")
            results.append({"adapter": cal, "steps": steps, "kept": True})
            start = cal
            continue
        if fitted_before:
            log(f"{name}: fitted before, calibrating")
            fitted: Dict[str, Any] = {"adapter": run / "adapter", "steps": steps}
        else:
            again = resume and (run / "checkpoint.safetensors").is_file()
            if again:  # a checkpoint of this round: fitted from this round's start (its strength), not copied in
                saved = checkpoint_adapter_config(run)
                if saved is not None and saved.strength != (start_config.strength if start_config else None):
                    raise ConfigError(f"{run / 'checkpoint.safetensors'} was not fitted from "
                                      f"{start or 'a new adapter'}: remove {run} to fit {name} again")
            elif resume and (run / "log.jsonl").exists() and not force:
                raise ConfigError(f"{name} was cut off before its first checkpoint ({run} has a log, no checkpoint): "
                                  "add --force to fit it again from its start")
            log(f"{name}: {steps} steps{' (resumed)' if again else ''} from {start or 'a new adapter'} -> {run}")
            this = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps),
                                       shape_given=recipe.shape_given if start is None else ())
            try:
                fitted = train(this, data=data, out=run, checkpoint=checkpoint, adapter=start, resume=again,
                               force=force, **train_kwargs)
            except PSICError as exc:  # which round failed
                raise type(exc)(f"{name}: {exc}") from None
        calibrated = calibrate(fitted["adapter"], cal, data=data, checkpoint=checkpoint, force=force, log=log)
        log(f"{name}: calibrated (R^2 {calibrated['r2']:.2f}) -> {cal}")
        results.append({**fitted, "adapter": calibrated["adapter"], "fitted": fitted["adapter"], "r2": calibrated["r2"]})
        start = calibrated["adapter"]
    return {"rounds": results, "adapter": Path(start)}


# ------------------------------------------------------------------ measuring
def run_name(adapter: PathLike) -> str:
    """A run's name: the run folder for ``RUN/adapter``, else the adapter folder's name."""
    p = Path(adapter)
    return p.resolve().parent.name if p.name == "adapter" else p.name


def run_log(adapter: PathLike):
    """The training log beside an adapter (``RUN/log.jsonl`` for ``RUN/adapter``), or None."""
    p = Path(adapter)
    log = p.parent / "log.jsonl"
    return log if p.is_dir() and log.is_file() else None


def evaluation_samples(data: Sequence[str], seed: int = 0, count: Optional[int] = None, split: str = "test"):
    """The evaluation images of every spec in ``data``, together (the first ``count``)."""
    from .eval.runner import load_samples

    samples = [s for spec in data for s in load_samples(spec, seed=seed, split=split)]
    return samples if count is None else samples[:count]


def evaluate(decoder, target, samples, config, name: str, meta: Optional[Dict[str, Any]] = None, log=None,
             say: Say = _quiet, show: Optional[Say] = None, progress: bool = True):
    """Measure one method (a :class:`~psic_adapter.eval.protocol.VersionDecoder`) on ``samples`` with ``config``;
    says first what it will measure and about how long, then the table. Returns a
    :class:`~psic_adapter.eval.report.ReportRun` (the result, its gallery, the training ``log``)."""
    import time

    from .eval import table
    from .eval.report import ReportRun
    from .eval.runner import Evaluator, describe_work, minutes

    ev = Evaluator(decoder, target, config=config, progress=progress)
    say(f"{name}: {describe_work(samples, config)}: {minutes(ev.estimate(samples))} on this machine (from decodes "
        "timed here)")
    t = time.perf_counter()
    result = ev.run(samples, meta={"name": name, **(meta or {})})
    say(f"measured {name} in {minutes(time.perf_counter() - t)}")
    (show or say)(table.summary(result, name))
    return ReportRun(name, result, ev.gallery, log)


def evaluate_adapters(adapters: Sequence[PathLike], target, samples, config, *, key=None, checkpoint=None,
                      data: Sequence[str] = (), say: Say = _quiet, shift_search=None) -> List[Any]:
    """``psic eval``: each adapter (a folder or hub id, on the codec it fits) measured with :func:`evaluate`;
    with ``shift_search``, each photo's encrypted version with the owner's per-photo shift (as ``psic compress
    --shift-for`` stores it)."""
    from .adapter import codec_for_adapter
    from .adapter.photo_shift import check_shiftable
    from .eval.protocol import PSICDecoder

    if shift_search is not None:
        for adapter in adapters:  # before any is measured
            check_shiftable(adapter)
    runs = []
    for adapter in adapters:
        model = with_adapter(codec_for_adapter(adapter, checkpoint), adapter)  # entropy coding on the CPU
        meta = {"adapter": str(adapter), "data": [str(d) for d in data], "key_given": key is not None,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()}}
        if shift_search is not None:
            meta["photo_shift"] = {"target": getattr(shift_search.target, "name", ""), "steps": shift_search.steps,
                                   "lr": shift_search.lr, "budget_db": shift_search.budget_db,
                                   "amp": shift_search.amp, "amp_used": shift_search.uses_amp("cpu"),
                                   "give_up": shift_search.give_up}  # the eval decodes on the CPU
        runs.append(evaluate(PSICDecoder(model, key, shift_search=shift_search), target, samples, config, run_name(adapter), meta=meta,
                             log=run_log(adapter), say=say))
    return runs


#: what each task needs as --data
TASK_DATA = {"imagenet": "an ImageFolder of ImageNet synset folders, or of any classes",
             "celeba": "CelebA's folder: list_attr_celeba.txt + img_align_celeba/",
             "caption": "the folder of the images to caption"}


def evaluate_task(task: str, adapters: Sequence[PathLike], judge, data: str, config, *, key=None, checkpoint=None,
                  limit: Optional[int] = None, split: Optional[str] = None, captions=None,
                  say: Say = _quiet) -> List[Any]:
    """``psic eval --task imagenet | celeba | caption`` (:mod:`psic_adapter.eval.tasks`) for each adapter."""
    from .adapter import codec_for_adapter
    from .eval import table, tasks
    from .eval.protocol import PSICDecoder
    from .eval.report import ReportRun

    runs = []
    for adapter in adapters:
        decoder = PSICDecoder(with_adapter(codec_for_adapter(adapter, checkpoint), adapter), key)
        name = run_name(adapter)
        gallery: List[Any] = []
        common = dict(config=config, limit=limit, progress=True, gallery=gallery)
        if task == "imagenet":
            result = tasks.imagenet_zero_shot(decoder, judge, data, **common)
        elif task == "celeba":
            result = tasks.celeba_attributes(decoder, judge, data, split=split or "test", **common)
        else:
            result = tasks.captioning(decoder, judge, data, references=captions, split=split, **common)
        result.meta.update({"name": name, "adapter": str(adapter), "data": str(data), "key_given": key is not None})
        runs.append(ReportRun(name, result, gallery, run_log(adapter)))
        say(table.summary(result, name))
    return runs


# ------------------------------------------------------------------ the BAvAFT baseline
def train_bavaft(config, *, target: str, data: str, out: PathLike, target_weights=None, codec: Optional[str] = None,
                 quality: Optional[int] = None, checkpoint=None, device: str = "auto", resume: bool = False,
                 force: bool = False) -> Dict[str, Any]:
    """``psic bavaft train``: BAvAFT (a trigger and a fine-tuned encoder on a copy of the codec) fitted against
    ``target`` with ``config`` (:class:`~psic_adapter.baselines.bavaft.BAvAFTTrainConfig`) on crops of ``data``."""
    from .baselines.bavaft import BAvAFT, BAvAFTConfig, train_bavaft as fit_bavaft
    from .data import build_dataset, repeats_for
    from .targets import build_target

    device = device_of(device)
    base = base_codec(codec, quality, checkpoint, device=device)
    judge = build_target(target, weights=target_weights, device=device)
    repeats = repeats_for(config.batch_size) if str(data).strip().lower() == "samples" else 1
    dataset = build_dataset(data, crop=config.crop, split="train", seed=config.seed, repeats=repeats)
    return fit_bavaft(BAvAFT(base.module, BAvAFTConfig()), judge, dataset, config, out, quality=base.quality,
                      device=device, resume=resume, force=force,
                      recipe={"codec": base.name, "quality": base.quality, "target": target, "data": str(data)})


def evaluate_bavaft(directory: PathLike, config, *, target: str, out: PathLike, data: Sequence[str] = ("samples",),
                    target_weights=None, count: Optional[int] = None, codec: Optional[str] = None,
                    quality: Optional[int] = None, checkpoint=None, force: bool = False, say: Say = _quiet) -> Path:
    """``psic bavaft eval``: a trained BAvAFT measured with :func:`evaluate` (no key: no wrong keys, no attack);
    writes the report into ``out`` and returns its page."""
    from .baselines.bavaft import BAvAFTDecoder, load_bavaft
    from .eval.report import write_report
    from .targets import build_target

    base = base_codec(codec, quality, checkpoint)
    decoder = BAvAFTDecoder(load_bavaft(base.module, directory), base.module)
    judge = build_target(target, weights=target_weights)
    samples = evaluation_samples(data, seed=config.seed, count=count)
    run = evaluate(decoder, judge, samples, config, "BAvAFT", meta={"data": list(data), "bavaft": str(directory)},
                   show=say)
    return write_report(out, [run], title="BAvAFT", force=force)


def calibrate(adapter: PathLike, out: PathLike, *, data: str, target_db: float = 0.8,
              sizes: Sequence[Optional[int]] = (512,), checkpoint=None, count: Optional[int] = 100,
              force: bool = False, log: Say = _quiet) -> Dict[str, Any]:
    """Fit the adapter's per-image strength (``psic_adapter.adapter.strength``) on the photos of ``data`` and
    save the adapter with it at ``out``: each photo's encrypted version then spends about ``target_db`` of its
    PSNR. ``sizes``: the longer sides the photos are coded at (``None``: their own size); with several, the
    strength also follows the photo's size, so that one adapter spends about ``target_db`` at each. Fit on
    training photos, never on the ones you measure on. ``count``: at most this many photos, spread evenly over
    the folder (None: all). Needs no key: the encrypted version is anyone's decode."""
    from .adapter.config import CONFIG_NAME, WEIGHTS_NAME
    from .errors import OverwriteError
    from .training.calibrate import fit_strength

    if Path(out).exists() and not Path(out).is_dir():  # before minutes of fitting, not after
        raise OverwriteError(f"{out} is a file, not a folder for the adapter")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if (Path(out) / name).exists() and not force:
            raise OverwriteError(f"{Path(out) / name} exists (--force overwrites it)")
    codec = base_codec(adapter=adapter, checkpoint=checkpoint).module
    model = with_adapter(codec, adapter)
    dataset = whole_training_photos(data)
    n = len(dataset)
    picks = range(n) if not count or count >= n else [round(i * n / count) for i in range(count)]
    at = " and ".join(f"{s} px" if s else "their own size" for s in dict.fromkeys(sizes))
    log(f"fitting the strength on {len(picks)} photos of {data} at {at} ...")
    res = fit_strength(model, (dataset[i]["image"] for i in picks), target_db, sizes=sizes,
                       fitted_on=f"{len(picks)} photos of {Path(str(data)).name} at {at}")
    model.config.strength = res["strength"]
    saved = model.save_pretrained(out, force=force)
    return {**res, "adapter": saved}
