"""The pretrained codec that ships with psic-adapter, so that everything works offline.

A real trained ``bmshj2018-hyperprior`` at quality 3 (N=128, M=192; 5.08 M
parameters): 10,184 steps on 217 photos and artworks, batch 64, 256 px crops,
``0.0067 * 255^2 * MSE + bpp`` (the project's shared checkpoint; see
docs/results.md for how it compares with CompressAI's zoo model). It ships in
half precision: parameters as float16 (read back as float32), the entropy
coder's tables exact, 11.0 MB instead of 21 (same bpp and PSNR to 0.01 dB on the
bundled photos: ``tools/make_shipped_codec.py`` prints the comparison). Its SHA-256 and its codec
fingerprint are recorded here and checked when it is loaded.

``tools/make_shipped_codec.py`` rebuilds the file from the original checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Optional

from ..errors import PSICError

SHIPPED_CODEC = {
    "name": "bmshj2018-hyperprior",
    "quality": 3,
    "file": "bmshj2018-hyperprior-q3-fp16.safetensors",
    "sha256": "fa1eaafc5bca539463cc5d37c516e9c07f666bfe69da278ff84ca5aba460ce27",
    "fingerprint": "7bfb03df1a246d0e34c54c14d5beb131145538826630be4e1935257379d156eb",
    "source": "the project's bmshj2018-hyperprior q3 checkpoint, parameters rounded to float16",
}


def _folder() -> Path:
    return Path(__file__).resolve().parent / "weights"


@functools.lru_cache(maxsize=None)
def shipped_codec_path() -> Path:
    """The shipped codec's file, after checking its SHA-256 against the recorded one."""
    path = _folder() / SHIPPED_CODEC["file"]
    if not path.is_file():
        raise PSICError(f"the shipped codec {path} is missing from this installation (reinstall psic-adapter)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if SHIPPED_CODEC["sha256"] and digest != SHIPPED_CODEC["sha256"]:
        raise PSICError(f"the shipped codec {path} is not the one psic-adapter was released with (SHA-256 "
                        f"{digest[:12]}, expected {SHIPPED_CODEC['sha256'][:12]}): reinstall psic-adapter")
    return path


def check_shipped_request(name: Optional[str] = None, quality: Optional[int] = None) -> None:
    """Refuse a request for the shipped codec under another name or quality."""
    if (name is not None and name != SHIPPED_CODEC["name"]) or (quality is not None and quality != SHIPPED_CODEC["quality"]):
        raise PSICError(f"the shipped codec is {SHIPPED_CODEC['name']} quality {SHIPPED_CODEC['quality']}, not "
                        f"{name} quality {quality}")


def is_shipped_checkpoint(name: str) -> bool:
    """True for the name users give the shipped codec on the command line (``--checkpoint shipped``)."""
    return str(name).strip().lower() == "shipped"


def shipped_codec_for(fingerprint: Optional[str]) -> Optional[Path]:
    """The shipped codec's file when ``fingerprint`` is its fingerprint, else None."""
    if not fingerprint or fingerprint != SHIPPED_CODEC["fingerprint"]:
        return None
    try:
        return shipped_codec_path()
    except PSICError:
        return None
