"""The Hugging Face Hub: adapters up and down (:mod:`.transfer`) with a model card (:mod:`.card`)."""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'card': ['render_model_card', 'write_model_card'],
        'transfer': ['is_hub_id', 'push_to_hub', 'snapshot'],
    },
)
