"""Training PSIC adapters: objectives, the two-stage schedule, views, the loop and the trainer.

* :mod:`.losses` -- pure loss functions (UAEO eq. 5-9, ablations, margin, guard, rate-distortion);
* :mod:`.objectives` -- the target side of a step (:class:`EncryptionObjective`);
* :mod:`.eot` -- what a served image goes through, shown to the target;
* :mod:`.schedule` -- which parameters train in each stage, and the phases;
* :mod:`.config` -- :class:`TrainConfig` and the named recipes;
* :mod:`.views` -- scale-of-use training views from latents encoded once;
* :mod:`.loop` -- the shared, resumable loop; :mod:`.checkpoints` -- its state without pickle;
* :mod:`.trainer` -- :class:`Trainer`.
"""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'config': ['COMPRESSAI_LAMBDAS', 'RECIPES', 'TrainConfig', 'default_recipe', 'recipe_settings'],
        'loop': ['CHECKPOINT_NAME', 'TrainingLoop', 'init_distributed_from_env'],
        'trainer': ['Trainer', 'checkpoint_adapter_config', 'train'],
    },
)
