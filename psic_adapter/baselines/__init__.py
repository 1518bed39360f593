"""Baselines that PSIC is compared against.

* :mod:`~psic_adapter.baselines.bavaft`: BAvAFT, "Backdoor Attacks against Deep
  Image Compression via Adaptive Frequency Trigger" (Yu et al., CVPR 2023), the
  method the PSIC paper compares with (sections 1, 4.1, 4.2). No public code
  exists; this is an independent re-implementation (see its module docstrings
  for what follows the paper and what had to be chosen).
"""
