"""The bitstream side: image files in and out, the ``.psic`` container, coding files with a codec.

* :mod:`.images` -- reading and writing images (grey, RGB, RGBA, 8/16-bit), EXIF
  orientation, the pixel limit, padding to the codec's multiple;
* :mod:`.container` -- the ``.psic`` format, every header field checked;
* :mod:`.coding` -- image file <-> ``.psic`` file through a codec (or a wrapped
  one), with the checks against the codec, the adapter, the key and the latent.
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'coding': ['EncodeResult', 'count_bytes', 'decode', 'decode_file', 'encode', 'encode_file'],
        'container': ['ContainerHeader', 'PAD_MULTIPLE', 'padded_size'],
        'images': ['ImageInfo', 'load_image', 'max_pixels', 'save_image', 'set_max_pixels'],
    },
)
