"""The paper's other benchmark tasks (PSIC, ICML 2025, section 4.1), from real bitstreams.

``psic eval`` measures classification at the scale of use on any image set
(:mod:`..runner`). These tasks need a dataset layout of their own; each takes
``(decoder, judge, root, *, config, limit, progress, **options)`` and returns
an :class:`~..record.EvalResult` (:mod:`.common`):

* :func:`imagenet_zero_shot` -- image classification (:mod:`.imagenet`);
* :func:`celeba_attributes` -- facial attributes (:mod:`.celeba`);
* :func:`captioning` -- captions by an unseen model (:mod:`.captioning`, :mod:`.captioner`).
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'captioner': ['HFCaptioner'],
        'captioning': ['caption_scores', 'captioning', 'tokenize_caption'],
        'celeba': ['CELEBA_ATTRIBUTES', 'CELEBA_PROMPTS', 'celeba_attributes', 'celeba_prompts'],
        'imagenet': ['imagenet_zero_shot'],
    },
)

#: the tasks of ``psic eval --task``
TASKS = ("classify", "imagenet", "celeba", "caption")
