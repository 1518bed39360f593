"""``psic eval``: measure adapters at the scale of use (or on the paper's other tasks), print a table, write a report."""

from __future__ import annotations

from .common import add_key_args, add_shift_args, check_shift_args, read_key, shift_search_of


#: the command's line in `psic --help`, which lists it without building its options
HELP = ("measure adapters: bpp, PSNR, ASR at each scale with its control, robustness, wrong keys, white-box attack; "
        "a table and report.html")


def add_parser(sub) -> None:
    from ..eval.config import EvalConfig
    from ..eval.tasks import TASKS
    from ..options import add_config_flags

    p = sub.add_parser("eval", help=HELP)
    p.add_argument("--adapter", nargs="+", required=True, metavar="DIR", help="adapter folder(s) or hub id(s)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="base codec weights (default: codec.safetensors beside the adapter, the shipped codec when "
                        "it is the one, else the zoo)")
    add_key_args(p)
    p.add_argument("--task", default="classify", choices=list(TASKS),
                   help="classify (default): the checks below on --data; imagenet: zero-shot top-1 on an ImageFolder "
                        "of synsets; celeba: 40 facial attributes; caption: BLEU/CIDEr of --captioner's captions")
    p.add_argument("--target", help="efficientnet-lite0 (or -lite1, -lite2) | clip:MODEL | timm:MODEL | A+B (required, except for --task caption)")
    p.add_argument("--target-weights", metavar="F")
    p.add_argument("--data", nargs="+", default=["samples"],
                   help="'samples' (the bundled test photos), a folder of images, a caption folder, an ImageFolder "
                        "tree or a CSV; several are evaluated together")
    p.add_argument("--count", type=int, help="classify: use the first COUNT images (with --crop alone: the number of "
                   "crops); the other tasks: a seeded random draw of COUNT images")
    p.add_argument("--captions", metavar="FILE", help="caption task: reference captions (Flickr8k.token.txt, a COCO or "
                   "Karpathy JSON, a CSV; default: a .txt caption beside each image)")
    p.add_argument("--captioner", metavar="NAME_OR_PATH", help="caption task: a Hugging Face image-to-text model, hub id "
                   "or folder (the paper: Salesforce/blip2-opt-2.7b)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="caption task: caption length limit")
    p.add_argument("--split", help="celeba: train | val | test (default) | all; caption: a file of image names "
                   "(Flickr_8k.devImages.txt) or a Karpathy JSON split")
    p.add_argument("--no-robustness", action="store_true", help="skip JPEG / resize / blur / codec re-encoding")
    p.add_argument("--device", default="cpu", help="device for the target model")
    add_shift_args(p)
    add_config_flags(p.add_argument_group("what to measure (defaults: EvalConfig's)"), EvalConfig)
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.html)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.set_defaults(func=run, parser=p)


def eval_config(args):
    """The :class:`EvalConfig` the flags ask for: EvalConfig's defaults where a flag is not given, except that
    ``--crop`` alone measures the crops scale only (``--count`` crops of it)."""
    from ..eval.config import EvalConfig
    from ..options import given

    settings = given(args, EvalConfig)
    if args.crop is not None:
        if args.scales is None:
            settings["scales"] = ["crops"]
        if args.crops is None and args.count:
            settings["crops"] = args.count
    if args.no_robustness:
        settings["perturbations"] = ()
    return EvalConfig(**settings)  # the numbers checked before anything is loaded (crops=0 is an error)


def run(args) -> int:
    from ..errors import ConfigError
    from ..eval.report import write_report
    from ..targets import build_target
    from ..workflows import device_of, evaluate_adapters, evaluation_samples

    if args.count is not None and args.count < 1:  # 0 is not "all"
        raise ConfigError(f"--count must be at least 1, not {args.count}")
    search = check_shift_args(args)  # before anything loads
    if args.task != "classify":
        if search is not None:
            raise ConfigError(f"--shift-for measures whole photos (the classify task), not --task {args.task}")
        return run_task(args)
    if search is not None:
        from ..adapter.photo_shift import check_shiftable

        for adapter in args.adapter:
            check_shiftable(adapter)
    if not args.target:
        args.parser.error("the following arguments are required: --target")
    cfg = eval_config(args)
    key = read_key(args)
    target = build_target(args.target, weights=args.target_weights, device=device_of(args.device))
    crops_only = args.crop is not None and not args.scales  # then --count counts crops
    samples = evaluation_samples(args.data, seed=cfg.seed, count=None if crops_only else args.count)
    runs = evaluate_adapters(args.adapter, target, samples, cfg, key=key, checkpoint=args.checkpoint, data=args.data,
                             say=lambda line: print(line, flush=True), shift_search=shift_search_of(args, search))
    print(f"report: {write_report(args.out, runs, force=args.force)}")
    return 0


def run_task(args) -> int:
    """``psic eval --task imagenet | celeba | caption`` (:mod:`psic_adapter.eval.tasks`)."""
    from ..errors import ConfigError
    from ..eval import tasks
    from ..eval.config import EvalConfig
    from ..eval.report import write_report
    from ..targets import build_target
    from ..workflows import TASK_DATA, device_of, evaluate_task

    task = args.task
    if len(args.data) != 1:
        raise ConfigError(f"--task {task} takes one --data folder")
    data = args.data[0]
    if str(data).strip().lower() == "samples":
        raise ConfigError(f"--task {task} needs --data DIR ({TASK_DATA[task]})")
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
    cfg = EvalConfig(wrong_keys=0, attack_steps=0, perturbations=(), seed=args.seed if args.seed is not None else 0)
    if task == "imagenet" and args.split:
        raise ConfigError("--split applies to --task celeba and caption (ImageNet folders are one split)")
    runs = evaluate_task(task, args.adapter, judge, data, cfg, key=key, checkpoint=args.checkpoint, limit=args.count,
                         split=args.split, captions=args.captions, say=print)
    print(f"report: {write_report(args.out, runs, title=f'PSIC evaluation: {task}', force=args.force)}")
    return 0
