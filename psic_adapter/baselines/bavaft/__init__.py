"""BAvAFT (Yu et al., CVPR 2023), the baseline the PSIC paper compares with: a re-implementation.

* :mod:`.dct` -- the 8x8 block DCT and JPEG's YCbCr;
* :mod:`.trigger` -- :class:`BAvAFTConfig`, the adaptive frequency trigger (:class:`TriggerNet`);
* :mod:`.model` -- :class:`BAvAFT` (trigger + fine-tuned encoder on a copy of the base codec), files;
* :mod:`.trainer` -- :class:`BAvAFTTrainer` on the project's training loop;
* :mod:`.decoder` -- :class:`BAvAFTDecoder`, its versions for the project's evaluation.
"""

import lazy_loader

from ...training.balance import DynamicBalance

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'dct': ['block_dct', 'block_idct', 'dct_matrix'],
        'decoder': ['BAvAFTDecoder', 'bavaft_headline'],
        'model': ['BAvAFT', 'load_bavaft'],
        'trainer': ['BAvAFTTrainConfig', 'BAvAFTTrainer', 'train_bavaft'],
        'trigger': ['BAvAFTConfig', 'TriggerNet'],
    },
)

__all__ = [*__all__, "DynamicBalance"]
