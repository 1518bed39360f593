"""CompressAI's registry of image codecs: their names, and the name of a codec object."""

from __future__ import annotations

import warnings
from typing import List

from torch import nn

#: constructor arguments for codecs that the zoo does not build
REGISTRY_DEFAULTS = {
    "cheng2020-anchor-checkerboard": {"N": 192},
    "elic2022-official": {"N": 192, "M": 320},
    "elic2022-chandelier": {"N": 192, "M": 320},
}
#: registry entries that are not still-image codecs
NOT_IMAGE = ("pcc", "ssf2020")


def compressai_registry():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import compressai  # noqa: F401  (imports torchvision / torch_geometric)
        from compressai.registry import MODELS
        from compressai.zoo import image_models
    return MODELS, image_models


def normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def available_codecs() -> List[str]:
    """Registry names of CompressAI's still-image codecs."""
    MODELS, _ = compressai_registry()
    return sorted(n for n in MODELS if not any(t in n for t in NOT_IMAGE))


def architecture_name(codec: nn.Module) -> str:
    """The registry name of ``codec``'s class (its class name for other codecs)."""
    MODELS, _ = compressai_registry()
    for name, cls in MODELS.items():
        if type(codec) is cls:
            return name
    return type(codec).__name__


