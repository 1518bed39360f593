"""Evaluation: metrics (quality, real bit rate, attack success rate), the
perturbations a served image meets, and self-contained HTML reports.

matplotlib, Pillow and torchvision are imported only when a function needs them.
"""

from . import metrics, report, robustness
from .metrics import (
    MS_SSIM_WEIGHTS,
    PSNR_CAP_DB,
    accuracy,
    agreement,
    attack_success_rate,
    bpp_from_file,
    bpp_from_strings,
    classification_asr,
    count_bytes,
    ms_ssim,
    psnr,
    recall_at_k,
    retrieval_asr,
    retrieval_hits,
    summarize,
)
from .report import format_value, image_grid_png, plot_rate_curves, to_jsonable, write_report
from .robustness import PERTURBATIONS, codec_roundtrip, gaussian_blur, get_perturbations, jpeg, resize

__all__ = [
    "metrics",
    "report",
    "robustness",
    # metrics
    "PSNR_CAP_DB",
    "MS_SSIM_WEIGHTS",
    "psnr",
    "ms_ssim",
    "bpp_from_strings",
    "bpp_from_file",
    "count_bytes",
    "accuracy",
    "agreement",
    "attack_success_rate",
    "classification_asr",
    "retrieval_hits",
    "recall_at_k",
    "retrieval_asr",
    "summarize",
    # robustness
    "jpeg",
    "resize",
    "gaussian_blur",
    "codec_roundtrip",
    "PERTURBATIONS",
    "get_perturbations",
    # report
    "image_grid_png",
    "plot_rate_curves",
    "write_report",
    "to_jsonable",
    "format_value",
]
