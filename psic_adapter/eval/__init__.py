"""Evaluation: what a method's decodes do to machine vision, from real bitstreams, at the scale of use.

* :mod:`.config` -- :class:`EvalConfig` (what to measure; its fields are ``psic eval``'s flags) and the scales;
* :mod:`.protocol` -- the versions of one image (PSIC's one bitstream; BAvAFT implements it too);
* :mod:`.measure` -- the one per-image loop (versions, control, quality, rate) and the :class:`Judge`;
* :mod:`.runner` -- :class:`Evaluator`: scales, classification, retrieval, robustness, over that loop;
* :mod:`.attacks` -- wrong keys and a white-box attacker on the condition (the decoder, the judge, the config);
* :mod:`.metrics` -- PSNR, MS-SSIM, real-byte bpp, accuracy, ASR, retrieval;
* :mod:`.record` -- the typed result (``metrics.json``) every reader reads;
* :mod:`.tasks` -- the paper's other tasks (ImageNet, CelebA, captioning);
* :mod:`.report` -- the HTML report; :mod:`.table` -- the terminal tables.

The perturbations a served image meets live in :mod:`psic_adapter.perturbations`.
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'config': ['EvalConfig'],
        'measure': ['Judge', 'Measurements'],
        'protocol': ['Decoded', 'PSICDecoder', 'VersionDecoder'],
        'record': ['EvalResult', 'Headline', 'ScaleResult', 'load_results'],
        'runner': ['DEFAULT_SCALES', 'Evaluator', 'Sample', 'load_samples'],
    },
)
