"""PSIC adapters: the CLTG modules, where they attach, the keys that switch them, the wrapped model.

* :mod:`.config` -- :class:`PSICConfig` (``adapter_config.json``), bounded;
* :mod:`.cltg` -- the CLTG modules (paper / official presets; bias, FiLM, spatial);
* :mod:`.surgery` -- finding a codec's decoder blocks and hooking them;
* :mod:`.keys` -- the key rule, the KDF, key -> condition;
* :mod:`.keyring` -- a model's owner conditions and derived-key cache;
* :mod:`.model` -- :class:`PSICModel`, :func:`wrap_model`, :func:`load_adapter`;
* :mod:`.files` -- an adapter folder's files, checked without a codec;
* :mod:`.download` -- adapter repositories from the Hugging Face Hub (uploading is :mod:`psic_adapter.hub`'s);
* :mod:`.pretrained` -- adapters on disk (and hub ids, through :mod:`.download`).
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'config': ['PSICConfig'],
        'model': ['PSICModel', 'load_adapter', 'wrap_model'],
        'pretrained': ['change_adapter_key', 'codec_for_adapter', 'fingerprint_matches'],
    },
)
