"""Rebuild the codec that ships with psic-adapter (psic_adapter/codec/weights/) from the original checkpoint.

    python tools/make_shipped_codec.py ../shared/codecs/bmshj2018-hyperprior-q3

Parameters are rounded to float16 (read back as float32); buffers, the entropy
coder's CDF tables among them, are kept exactly. Prints the SHA-256 of the
file and the codec fingerprint to record in psic_adapter/codec/shipped.py, and
how the shipped codec compares with the original on the bundled sample photos
(real entropy coding).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from safetensors.torch import save

    from psic_adapter.bitstream.coding import decode, encode
    from psic_adapter.codec import fingerprint, load_codec
    from psic_adapter.codec.shipped import SHIPPED_CODEC
    from psic_adapter.data import sample_names, sample_photo
    from psic_adapter.eval.metrics import bpp_from_strings, psnr

    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", help="the original checkpoint (a folder of safetensors shards)")
    args = ap.parse_args()
    original = load_codec(SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"], checkpoint=args.checkpoint)
    params = {n for n, _ in original.named_parameters()}
    state = {}
    for k, v in original.state_dict().items():
        v = v.detach().cpu().contiguous().clone()
        state[k] = v.half() if k in params and v.is_floating_point() else v
    out = REPO / "psic_adapter" / "codec" / "weights" / SHIPPED_CODEC["file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    data = save(state, metadata={"architecture": SHIPPED_CODEC["name"], "quality": str(SHIPPED_CODEC["quality"]),
                                 "source": SHIPPED_CODEC["source"]})
    out.write_bytes(data)
    shipped = load_codec(SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"], checkpoint=out)
    print(f"wrote {out} ({len(data) / 1e6:.2f} MB)")
    print(f'"sha256": "{hashlib.sha256(data).hexdigest()}",')
    print(f'"fingerprint": "{fingerprint(shipped)}",')
    tables = all(torch.equal(a, b) for (n, a), (_, b) in zip(original.named_buffers(), shipped.named_buffers()))
    print(f"entropy tables and other buffers identical to the original: {tables}")
    for name in sample_names("all"):
        x, _ = sample_photo(name)
        row = [name]
        for codec in (original, shipped):
            enc = encode(codec, x)
            y = decode(codec, enc, enc["size"]).clamp(0, 1)
            row.append(f"{bpp_from_strings(enc['strings'], x.shape[-2] * x.shape[-1]):.4f} bpp "
                       f"{float(psnr(y, x)[0]):.2f} dB")
        print(f"{row[0]:18s} original {row[1]}   shipped {row[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
