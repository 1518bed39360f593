"""What an evaluation measures: :class:`EvalConfig` and the scales. Imports no torch.

Each field carries its command-line help (:func:`psic_adapter.options.opt`): ``psic eval``'s and
``psic bavaft eval``'s flags are made from it, so a default lives here only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import ConfigError, show
from ..options import opt

#: the scales ``psic eval`` (and :class:`EvalConfig`) measure by default
DEFAULT_SCALES = ("crops", "native", "long512", "long1024")
#: what a served image meets: JPEG-75, a 0.5x resize, a blur, the base codec again
PERTURBATIONS = ("jpeg75", "resize0.5", "blur1", "codec")
_LONG = re.compile(r"(?:long)?(\d+)")


def parse_scale(name: str) -> Tuple[str, Optional[int]]:
    """``"native"`` -> ("native", None); ``"crops"`` -> ("crops", None); ``"512"``/``"long512"`` -> ("long", 512)."""
    name = str(name).strip().lower()
    if name in ("native", "crops"):
        return name, None
    m = _LONG.fullmatch(name)
    if m and 32 <= int(m.group(1)) <= 8192:
        return "long", int(m.group(1))
    raise ConfigError(f"unknown evaluation scale {name!r} (native, crops, or a longer side such as 512 / long512)")


def scale_key(name: str) -> str:
    kind, size = parse_scale(name)
    return f"long{size}" if kind == "long" else kind


@dataclass
class EvalConfig:
    """What to measure (each field's help is its flag's in ``psic eval``)."""

    scales: Sequence[str] = opt(DEFAULT_SCALES, "native (whole images at their size), crops (random --crop crops), or "
                                                "a longer side in px (512, 1024: whole images resized first)",
                                metavar="SCALE")
    primary: Optional[str] = opt(None, "scale of the headline, wrong keys, attack and gallery (default: the first)",
                                 metavar="SCALE")
    crop: int = opt(224, "crop size of the crops scale (psic eval: --crop alone measures the crops scale only)")
    crops: int = opt(96, "number of crops of the crops scale, spread over the images")
    wrong_keys: int = opt(10, "random wrong-key conditions fed to the network at the primary scale (each one "
                              "decodes every image of that scale again)")
    attack_steps: int = opt(50, "white-box attacker's steps (0: skip)")
    attack_lr: float = opt(0.05, "white-box attacker's Adam step on the condition")
    attack_images: int = opt(16, "images the white-box attacker optimises on")
    perturbations: Sequence[str] = opt(PERTURBATIONS, "what served images meet (psic eval: --no-robustness: none)",
                                       cli=False)
    robustness_scales: Optional[Sequence[str]] = opt(None, "scales that get the perturbations (default: every scale)",
                                                     metavar="SCALE")
    grid_images: int = opt(6, "images of the primary scale shown in the report", cli=False)
    class_names: Optional[List[str]] = opt(None, "what the top-1 indices mean (default: the target's)", cli=False)
    prompt: str = opt("a photo of a {}.", "CLIP's zero-shot prompt", cli=False)
    seed: int = opt(0, "seed of the crops, the controls, the wrong keys")

    def __post_init__(self):
        """Counts are what the user said: ``crops=0`` is an error (it ran 96), ``wrong_keys=-1`` too (it skipped
        the check); 0 wrong keys or attack steps skips that check, as documented."""
        for name, least in (("crop", 16), ("crops", 1), ("wrong_keys", 0), ("attack_steps", 0), ("attack_images", 1),
                            ("grid_images", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ConfigError(f"{name} must be an integer >= {least}, not {show(v)}")
        if isinstance(self.attack_lr, bool) or not isinstance(self.attack_lr, (int, float)) \
                or not 0 < self.attack_lr < float("inf"):
            raise ConfigError(f"attack_lr must be a positive number, not {show(self.attack_lr)}")
