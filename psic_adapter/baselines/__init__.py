"""Baselines that PSIC is compared against.

* :mod:`~psic_adapter.baselines.bavaft`: BAvAFT, "Backdoor Attacks against Deep
  Image Compression via Adaptive Frequency Trigger" (Yu et al., CVPR 2023), the
  method the PSIC paper compares with (sections 1, 4.1, 4.2). No public code
  exists; this is an independent re-implementation (see the module docstring for
  what follows the paper and what had to be chosen).
"""

from .bavaft import (
    BAvAFT,
    BAvAFTConfig,
    BAvAFTEvaluator,
    BAvAFTTrainConfig,
    BAvAFTTrainer,
    DynamicBalance,
    TriggerNet,
    bavaft_headline,
    block_dct,
    block_idct,
    dct_matrix,
    load_bavaft,
    train_bavaft,
)

__all__ = [
    "BAvAFT",
    "BAvAFTConfig",
    "BAvAFTEvaluator",
    "BAvAFTTrainConfig",
    "BAvAFTTrainer",
    "DynamicBalance",
    "TriggerNet",
    "bavaft_headline",
    "block_dct",
    "block_idct",
    "dct_matrix",
    "load_bavaft",
    "train_bavaft",
]
