"""Publish a trained adapter and its synthetic dataset to the Hub, each with its card.

The token is looked up by huggingface_hub (HF_TOKEN, then the stored login) and handed only to the
HTTP client: nothing here writes it to a card, a log line or a file. A push that fails for a reason
worth retrying (server error, rate limit, network) is retried with backoff; then it fails with an
error naming the local folder, which the push never modifies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import httpx2
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from .task import Task
from .errors import SelfGuideError

logger = logging.getLogger(__name__)

# Trainer state, optimizer checkpoints and the pickled arguments stay local: the adapter, its card and
# the tokenizer are what a user of the repo needs.
# eval_predictions.jsonl holds the task's gold evaluation rows: published beside the adapter, they would
# leak a test set into the next crawl.
TRAINING_LEFTOVERS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "training_args.bin", "dataset/**", "*.lock", "eval_predictions.jsonl"]
_NO_RETRY_STATUS = {400, 401, 403, 404, 409, 422}


class HubPushError(SelfGuideError, RuntimeError):
    pass


@dataclass
class PushResult:
    repo_id: str  # with its namespace, as the Hub resolved it
    commit_url: str


def require_token() -> str:
    """Fail early, before training, when a push is asked for and no token can be found."""
    token = get_token()
    if not token:
        raise HubPushError(
            "push_to_hub: no Hugging Face token found. Fix: run `hf auth login`, or set HF_TOKEN in the environment"
        )
    return token


def _retryable(error: Exception) -> bool:
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        return status not in _NO_RETRY_STATUS
    return isinstance(error, (httpx2.TransportError, ConnectionError, TimeoutError))


def push_folder(
    folder,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: Optional[bool] = None,
    commit_message: str = "Upload with selfguide",
    ignore_patterns: Optional[Sequence[str]] = None,
    attempts: int = 3,
    backoff_s: float = 2.0,
    endpoint: Optional[str] = None,
) -> PushResult:
    """Create the repo if needed and upload `folder` in one commit."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubPushError(f"push: folder {folder} does not exist. Fix: train first, or pass the output folder")
    api = HfApi(endpoint=endpoint, token=require_token())
    last: Optional[Exception] = None
    for attempt in range(1, attempts + 1):
        try:
            url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=url.repo_id,
                folder_path=folder,
                repo_type=repo_type,
                commit_message=commit_message,
                ignore_patterns=list(ignore_patterns or []),
            )
            logger.info("pushed %s to %s", folder, commit.commit_url)
            return PushResult(url.repo_id, commit.commit_url)
        except Exception as e:  # the client raises HTTP, transport and OS errors; only some deserve a retry
            if not _retryable(e):
                status = getattr(getattr(e, "response", None), "status_code", None)
                fix = (
                    "check that the token (HF_TOKEN, or `hf auth login`) is valid and may write to this repo"
                    if status in (401, 403)
                    else "correct the request named above and push again"
                )
                raise HubPushError(
                    f"push of {folder} to {repo_type} repo '{repo_id}' failed: {e}. The local output in {folder} is intact. Fix: {fix}"
                ) from e
            last = e
            if attempt < attempts:
                wait = backoff_s * 2 ** (attempt - 1)
                logger.warning("push attempt %d/%d failed (%s); retrying in %.1fs", attempt, attempts, e, wait)
                time.sleep(wait)
    command = f"hf upload {repo_id} {folder}" + (" --repo-type dataset" if repo_type == "dataset" else "")
    command += "".join(f" --exclude '{p}'" for p in ignore_patterns or [])
    raise HubPushError(
        f"push of {folder} to {repo_type} repo '{repo_id}' failed after {attempts} attempts: {last}. "
        f"The local output in {folder} is intact. Fix: check the network and the Hub status, then push again "
        f"or upload it with `{command}`"
    ) from last


def push_adapter(output_dir, repo_id: str, **kwargs) -> PushResult:
    """The trained adapter (or model), its tokenizer and its README.md card."""
    return push_folder(output_dir, repo_id, ignore_patterns=TRAINING_LEFTOVERS, **kwargs)


def save_dataset_for_hub(
    dataset, folder, task: Task, data_summary, license: Optional[str] = None, gold_rows: bool = False
) -> Path:
    """Write a DatasetDict as the Hub lays datasets out: `data/<split>-00000-of-00001.parquet` plus README.md.

    The `test` split, the task's gold rows, is left out unless `gold_rows`: like the evaluation's answers
    (TRAINING_LEFTOVERS), a test set once published leaks into the next crawl. The task's spec goes with
    the rows (`task.json`, without its gold rows unless `gold_rows`), so the dataset knows what it was made for.
    """
    from .hub_cards import render_dataset_card, validate_dataset_card
    from .task import save_task

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    splits = {name: rows for name, rows in dataset.items() if gold_rows or name != "test"}
    for split, rows in splits.items():
        rows.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    summary = replace(data_summary, test_rows=splits["test"].num_rows if "test" in splits else 0)
    first = next(iter(splits.values()))
    card = render_dataset_card(task, summary, first.column_names, list(splits), license=license)
    card.save(folder / "README.md")
    validate_dataset_card(card, folder)
    save_task(task if gold_rows else replace(task, gold=[]), folder)
    return folder


def push_dataset(folder, repo_id: str, **kwargs) -> PushResult:
    return push_folder(folder, repo_id, repo_type="dataset", **kwargs)
