"""``psic push``: an adapter and its model card to the Hugging Face Hub (never the key)."""

from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload an adapter with a model card to the Hugging Face Hub (never the key)")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("repo_id", metavar="REPO_ID", help="hub id, org/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="R", help="branch to push to (created when missing; default main)")
    p.add_argument("--metrics", metavar="F", help="metrics.json of `psic eval` (or its report folder): a table in the card")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--commit-message", metavar="M", help="commit message (default: 'Upload PSIC adapter')")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import PSICError
    from ..hub import push_to_hub

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise PSICError(f"the environment variable {args.token_env} holding the hub token is not set or empty")
    info = push_to_hub(args.adapter_dir, args.repo_id, private=args.private, token=token, revision=args.revision,
                       commit_message=args.commit_message, create_pr=args.create_pr, card_metrics=args.metrics)
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info
    print(f"{args.repo_id}: pushed adapter_config.json, adapter_model.safetensors, README.md ({url})")
    return 0
