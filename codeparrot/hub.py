"""Push a built folder (dataset, tokenizer, model) to the Hugging Face Hub or to its local stand-in.

- Hub: `create_repo(exist_ok=True)` and one `upload_folder` commit, skipped when the head commit already
  records the same content hash. The token comes from the caller (a Prefect Secret block) or `HF_TOKEN`,
  and is never logged.
- Local stand-in (the embedded default): `<root>/<kind>s/<owner>/<name>/revisions/<id>/` immutable
  folders named by content hash, a `main` link moved atomically, a `revisions.jsonl` log, and a file lock
  so concurrent pushes serialise. Readers see the old revision or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from codeparrot.errors import ConfigError, PermanentServiceError, ServiceError

RepoKind = Literal["dataset", "model"]


class PushResult(BaseModel):
    target: Literal["hub", "local"]
    repo: str
    revision: str
    path: str | None
    url: str
    skipped: bool = False


def folder_hash(folder: Path) -> str:
    """sha256 over relative paths and bytes of every file: a folder's content identity."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def local_repo_dir(root: Path, kind: RepoKind, name: str) -> Path:
    return root / f"{kind}s" / name


def push_local(folder: Path, root: Path, kind: RepoKind, name: str, content_hash: str | None = None) -> PushResult:
    """Move `folder` into the local stand-in as an immutable revision and point `main` at it."""
    content_hash = content_hash or folder_hash(folder)
    repo_dir = local_repo_dir(root, kind, name)
    revision = content_hash[:12]
    target = repo_dir / "revisions" / revision
    with locked(repo_dir / ".lock"):
        head = repo_dir / "main"
        skipped = target.exists() and head.is_symlink() and os.readlink(head) == f"revisions/{revision}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder, target)
        if not skipped:
            link = repo_dir / f".main.{os.getpid()}"
            link.unlink(missing_ok=True)
            link.symlink_to(f"revisions/{revision}")
            os.replace(link, head)  # atomic: readers see the old revision or the new one
            entry = {"revision": revision, "content_sha256": content_hash, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with open(repo_dir / "revisions.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
    return PushResult(target="local", repo=name, revision=revision, path=str(target), url=target.as_uri(), skipped=skipped)


def push_hub(
    folder: Path,
    repo_id: str,
    kind: RepoKind,
    *,
    token: str | None,
    private: bool = True,
    content_hash: str | None = None,
    delete_patterns: list[str] | None = None,
    api: Any = None,
) -> PushResult:
    """One commit of the whole folder to a Hub repo, skipped when its head has the same content hash."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE and api is None:
        raise ConfigError(f"HF_HUB_OFFLINE=1 is set but a Hub repo ({repo_id}) is configured: set HF_HUB_OFFLINE=0 to push")
    if token is None and api is None:
        raise ConfigError(f"pushing to {repo_id} needs a token: set HF_TOKEN or name a Prefect Secret block holding it")
    api = api or HfApi(token=token)
    content_hash = content_hash or folder_hash(folder)
    marker = f"codeparrot-content: {content_hash}"
    prefix = "datasets/" if kind == "dataset" else ""
    try:
        api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
        commits = api.list_repo_commits(repo_id, repo_type=kind)
        head = commits[0] if commits else None
        if head is not None and marker in (head.message or ""):
            url = f"https://huggingface.co/{prefix}{repo_id}/tree/{head.commit_id}"
            return PushResult(target="hub", repo=repo_id, revision=head.commit_id, path=None, url=url, skipped=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type=kind,
            folder_path=str(folder),
            commit_message=f"Publish {kind} ({content_hash[:12]})",
            commit_description=marker,
            delete_patterns=delete_patterns,
        )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status < 500 and status != 429:
            raise PermanentServiceError(f"the Hub refused the push to {repo_id} ({status}): {exc}") from exc
        raise ServiceError(f"the Hub failed during the push to {repo_id}: {exc}; retry later") from exc
    revision = getattr(info, "oid", None) or str(info)
    return PushResult(target="hub", repo=repo_id, revision=revision, path=None, url=f"https://huggingface.co/{prefix}{repo_id}/tree/{revision}")
