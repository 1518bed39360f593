"""What every benchmark script's command line shares: threads, seed, a JSON output."""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch


def parse(p: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Add ``--threads``, ``--seed`` and ``--json`` to ``p``, parse ``argv`` and set torch's intra-op threads."""
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
