"""``psic eval``: measure adapters at the scale of use (or on the paper's other tasks), print a table, write a report."""

from __future__ import annotations

from pathlib import Path

from .common import add_key_args, device_of, read_key


def add_parser(sub) -> None:
    from ..eval.tasks import TASKS

    p = sub.add_parser("eval", help="measure adapters: bpp, PSNR, ASR at each scale with its control, robustness, "
                                    "wrong keys, white-box attack; a table and report.html")
    p.add_argument("--adapter", nargs="+", required=True, metavar="DIR", help="adapter folder(s) or hub id(s)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="base codec weights (default: codec.safetensors beside the adapter, the shipped codec when "
                        "it is the one, else the zoo)")
    add_key_args(p)
    p.add_argument("--task", default="classify", choices=list(TASKS),
                   help="classify (default): the checks below on --data; imagenet: zero-shot top-1 on an ImageFolder "
                        "of synsets; celeba: 40 facial attributes; caption: BLEU/CIDEr of --captioner's captions")
    p.add_argument("--target", help="efficientnet-lite0 | clip:MODEL | timm:MODEL | A+B (required, except for --task caption)")
    p.add_argument("--target-weights", metavar="F")
    p.add_argument("--data", nargs="+", default=["samples"],
                   help="'samples' (the bundled test photos), a folder of images, a caption folder, an ImageFolder "
                        "tree or a CSV; several are evaluated together")
    p.add_argument("--scales", nargs="+", metavar="SCALE",
                   help="native (whole images at their size), crops (random --crop crops), or a longer side in px "
                        "(512, 1024: whole images resized first); default: crops native 512 1024")
    p.add_argument("--primary", metavar="SCALE", help="scale of the headline, wrong keys and attack (default: the first)")
    p.add_argument("--robustness-scales", nargs="+", metavar="SCALE",
                   help="scales that get the perturbations (default: every scale)")
    p.add_argument("--crop", type=int, help="crop size of the crops scale (default 224); alone, the crops scale only")
    p.add_argument("--crops", type=int, help="number of crops of the crops scale (default 96)")
    p.add_argument("--count", type=int, help="classify: use the first COUNT images (with --crop alone: the number of "
                   "crops); the other tasks: a seeded random draw of COUNT images")
    p.add_argument("--captions", metavar="FILE", help="caption task: reference captions (Flickr8k.token.txt, a COCO or "
                   "Karpathy JSON, a CSV; default: a .txt caption beside each image)")
    p.add_argument("--captioner", metavar="NAME_OR_PATH", help="caption task: a Hugging Face image-to-text model, hub id "
                   "or folder (the paper: Salesforce/blip2-opt-2.7b)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="caption task: caption length limit")
    p.add_argument("--split", help="celeba: train | val | test (default) | all; caption: a file of image names "
                   "(Flickr_8k.devImages.txt) or a Karpathy JSON split")
    p.add_argument("--wrong-keys", type=int, default=10,
                   help="random wrong-key conditions fed to the network at the primary scale (default 10: each one "
                        "decodes every image of that scale again)")
    p.add_argument("--attack-steps", type=int, default=50, help="white-box attacker's steps (0: skip)")
    p.add_argument("--attack-images", type=int, default=16)
    p.add_argument("--no-robustness", action="store_true", help="skip JPEG / resize / blur / codec re-encoding")
    p.add_argument("--device", default="cpu", help="device for the target model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.html)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.set_defaults(func=run, parser=p)


def run_name(adapter: str) -> str:
    """A run's name: the run folder for ``RUN/adapter``, else the adapter folder's name."""
    p = Path(adapter)
    return p.resolve().parent.name if p.name == "adapter" else p.name


def run_log(adapter: str):
    """The training log beside an adapter (``RUN/log.jsonl`` for ``RUN/adapter``), or None."""
    p = Path(adapter)
    log = p.parent / "log.jsonl"
    return log if p.is_dir() and log.is_file() else None


def _config(args):
    from ..eval.runner import DEFAULT_SCALES, EvalConfig

    scales = args.scales or (["crops"] if args.crop is not None else list(DEFAULT_SCALES))
    crops = args.crops if args.crops is not None else (args.count if args.crop is not None and args.count else 96)
    return EvalConfig(scales=scales, primary=args.primary, crop=args.crop if args.crop is not None else 224,
                      crops=crops,  # 0 is an error (EvalConfig), never the default
                      wrong_keys=args.wrong_keys, attack_steps=args.attack_steps, attack_images=args.attack_images,
                      perturbations=() if args.no_robustness else EvalConfig.perturbations,
                      robustness_scales=args.robustness_scales, seed=args.seed)


def run(args) -> int:
    from ..adapter import codec_for_adapter, load_adapter
    from ..eval import table
    from ..errors import ConfigError
    from ..eval.protocol import PSICDecoder
    from ..eval.report import ReportRun, write_report
    from ..eval.runner import Evaluator, describe_work, load_samples, minutes
    from ..targets import build_target

    if args.count is not None and args.count < 1:  # 0 is not "all"
        raise ConfigError(f"--count must be at least 1, not {args.count}")
    if args.task != "classify":
        return run_task(args)
    if not args.target:
        args.parser.error("the following arguments are required: --target")
    cfg = _config(args)  # the numbers checked before anything is loaded
    key = read_key(args)
    target = build_target(args.target, weights=args.target_weights, device=device_of(args.device))
    samples = [s for spec in args.data for s in load_samples(spec, seed=args.seed)]
    if args.count and not (args.crop is not None and not args.scales):
        samples = samples[: args.count]
    runs = []
    for adapter in args.adapter:
        model = load_adapter(codec_for_adapter(adapter, args.checkpoint), adapter)  # entropy coding on the CPU
        name = run_name(adapter)
        meta = {"name": name, "adapter": str(adapter), "data": [str(d) for d in args.data], "key_given": key is not None,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}}
        ev = Evaluator(PSICDecoder(model, key), target, config=cfg)
        print(f"{name}: {describe_work(samples, cfg)}: {minutes(ev.estimate(samples))} on this machine (from "
              "decodes timed here)", flush=True)
        result = ev.run(samples, meta=meta)
        runs.append(ReportRun(name, result, ev.gallery, run_log(adapter)))
        print(table.summary(result, name))
    html = write_report(args.out, runs, force=args.force)
    print(f"report: {html}")
    return 0


def run_task(args) -> int:
    """``psic eval --task imagenet | celeba | caption`` (:mod:`psic_adapter.eval.tasks`)."""
    from ..adapter import codec_for_adapter, load_adapter
    from ..errors import ConfigError
    from ..eval import table, tasks
    from ..eval.protocol import PSICDecoder
    from ..eval.report import ReportRun, write_report
    from ..eval.runner import EvalConfig
    from ..targets import build_target

    task = args.task
    if len(args.data) != 1:
        raise ConfigError(f"--task {task} takes one --data folder")
    data = args.data[0]
    if str(data).strip().lower() == "samples":
        raise ConfigError(f"--task {task} needs --data DIR (" + {
            "imagenet": "an ImageFolder of ImageNet synset folders, or of any classes",
            "celeba": "CelebA's folder: list_attr_celeba.txt + img_align_celeba/",
            "caption": "the folder of the images to caption"}[task] + ")")
    if args.crop is not None or args.scales:
        raise ConfigError("--crop and --scales apply to --task classify only (the other tasks take whole images)")
    if task == "caption" and not args.captioner:
        raise ConfigError("--task caption needs --captioner NAME_OR_PATH (e.g. Salesforce/blip-image-captioning-base)")
    if task != "caption" and not args.target:
        args.parser.error(f"--task {task} needs --target (e.g. clip:ViT-B-32)")
    device = device_of(args.device)
    key = read_key(args)
    judge = (tasks.HFCaptioner(args.captioner, device=device, max_new_tokens=args.max_new_tokens) if task == "caption"
             else build_target(args.target, weights=args.target_weights, device=device))
    cfg = EvalConfig(wrong_keys=0, attack_steps=0, perturbations=(), seed=args.seed)
    if task == "imagenet" and args.split:
        raise ConfigError("--split applies to --task celeba and caption (ImageNet folders are one split)")
    runs = []
    for adapter in args.adapter:
        model = load_adapter(codec_for_adapter(adapter, args.checkpoint), adapter)
        decoder = PSICDecoder(model, key)
        name = run_name(adapter)
        gallery = []
        common = dict(config=cfg, limit=args.count, progress=True, gallery=gallery)
        if task == "imagenet":
            result = tasks.imagenet_zero_shot(decoder, judge, data, **common)
        elif task == "celeba":
            result = tasks.celeba_attributes(decoder, judge, data, split=args.split or "test", **common)
        else:
            result = tasks.captioning(decoder, judge, data, references=args.captions, split=args.split, **common)
        result.meta.update({"name": name, "adapter": str(adapter), "data": str(data), "key_given": key is not None})
        runs.append(ReportRun(name, result, gallery, run_log(adapter)))
        print(table.summary(result, name))
    html = write_report(args.out, runs, title=f"PSIC evaluation: {task}", force=args.force)
    print(f"report: {html}")
    return 0
