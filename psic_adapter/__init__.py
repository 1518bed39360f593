"""psic_adapter: Privacy-Shielded Image Compression adapters for CompressAI codecs.

One bitstream, two decodings: ``model.decompress(...)`` gives the *encrypted*
version (looks like the image, misleads machine vision); with the owner's key it
gives the *full* version. See README.md and docs/.
"""

__version__ = "0.1.7"

from .errors import (  # noqa: E402
    ConfigError,
    ContainerError,
    DataError,
    FingerprintMismatchError,
    ImageError,
    KeyMismatchError,
    OverwriteError,
    PSICError,
    TargetError,
)

_LAZY = {
    # core (imports torch + compressai, so loaded on first use)
    "PSICConfig": ".adapter",
    "wrap_model": ".adapter",
    "load_adapter": ".adapter",
    "PSICModel": ".adapter",
    "load_codec": ".codec",
    "TrainConfig": ".training",
    "Trainer": ".training",
    "Evaluator": ".eval",
}

__all__ = [
    "__version__",
    "PSICError",
    "ConfigError",
    "ContainerError",
    "DataError",
    "FingerprintMismatchError",
    "ImageError",
    "KeyMismatchError",
    "OverwriteError",
    "TargetError",
    *_LAZY,
]


def __getattr__(name):  # PEP 562: keep `import psic_adapter` (and `psic --help`) fast
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
