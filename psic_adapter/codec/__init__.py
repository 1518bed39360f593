"""Base codecs: building them by name, their weights on disk, telling them apart, their latents.

* :mod:`.build` -- :func:`load_codec`, :func:`build_codec`, the registry names;
* :mod:`.checkpoint` -- reading checkpoints, writing ``codec.safetensors``;
* :mod:`.fingerprint` -- a codec's identity (parameters) and its entropy tables' hash;
* :mod:`.latent` -- a bitstream entropy-decoded to ``y_hat`` without ``g_s``;
* :mod:`.shipped` -- the pretrained codec that ships with psic-adapter (offline).
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'build': ['build_codec', 'codec_dims', 'latent_channels', 'load_codec', 'load_shipped_codec', 'prepare_for_coding', 'synthesis_transform', 'tables_ready'],
        'registry': ['architecture_name', 'available_codecs', 'normalize_name'],
        'checkpoint': ['read_checkpoint', 'save_codec'],
        'fingerprint': ['entropy_tables_hash', 'fingerprint'],
        'latent': ['decode_latent'],
        'shipped': ['SHIPPED_CODEC', 'shipped_codec_for', 'shipped_codec_path'],
    },
)
