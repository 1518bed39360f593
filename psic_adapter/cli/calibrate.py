"""``psic calibrate``: fit an adapter's per-image strength on training photos (issue 15)."""

from __future__ import annotations

HELP = "fit an adapter's per-image strength so each photo spends about the same PSNR budget"


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help=HELP, description=(
        "Scale the adapter's change per image by what its latent holds, fitted on training photos so that each "
        "photo's encrypted version sits about --target-db under the base decode (the same change costs 2.5 dB on "
        "a smooth photo and 0.1 dB on a busy one). Writes a copy of the adapter with the fitted strength; its "
        "fingerprint is new. Fit on training photos, measure on others (psic eval)."))
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="adapter folder")
    p.add_argument("output", metavar="OUT_DIR", help="folder for the calibrated adapter (ADAPTER_DIR itself needs --force)")
    p.add_argument("--data", required=True, help="folder of training photos (not the ones you will measure on)")
    p.add_argument("--target-db", type=float, default=0.8, help="PSNR each photo's encrypted version spends, dB")
    p.add_argument("--size", type=int, nargs="+", default=[512], metavar="PX",
                   help="longer side(s) the photos are coded at, px (0: their own size); with several, e.g. "
                        "'--size 512 0', the strength also follows the photo's size, so that photos served at "
                        "each size spend about --target-db")
    p.add_argument("--count", type=int, default=100, help="at most this many photos, spread over the folder (0: all)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="codec weights the adapter fits ('shipped': the codec shipped with the package)")
    p.add_argument("--force", action="store_true", help="overwrite the adapter files in OUT_DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..workflows import calibrate

    if min(args.size) < 0 or args.count < 0:
        raise ConfigError("--size and --count are counts >= 0")
    res = calibrate(args.adapter_dir, args.output, data=args.data, target_db=args.target_db,
                    sizes=[s or None for s in args.size],
                    checkpoint=args.checkpoint, count=args.count or None, force=args.force, log=print)
    s = res["strength"]
    by_size = f" + {s['size_slope']:.3f} log(latent positions)" if s.get("size_slope") else ""
    print(f"{res['adapter']}: strength exp({s['intercept']:.3f} + {s['slope']:.3f} log(non-zero share of the "
          f"latent){by_size}), clamped to [{s['min']}, {s['max']}], fitted on {res['photos']} photos "
          f"(R^2 {res['r2']:.2f}); "
          "measure it with psic eval")
    return 0
