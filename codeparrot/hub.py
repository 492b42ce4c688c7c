"""The Hub target of datasets, tokenizers and models: the Hugging Face Hub, or its stand-in, by configuration.

One interface, two backends, chosen by `HubSettings` (the environment, plus a token from a Prefect Secret
block when a flow names one):

- `HubAPI`: the Hugging Face Hub (or another endpoint, `HF_ENDPOINT`) through `huggingface_hub.HfApi`,
  used when the network is allowed (`HF_HUB_OFFLINE=0`) and a token or an endpoint is configured. A push
  is one `upload_folder` commit, skipped when the head commit records the same content hash.
- `StandIn`: the embedded default, a Hub that lives in a `Store` (`CODEPARROT_HUB_ROOT`: a `gs://` URI,
  by default a bucket on the GCS emulator, or a local folder), so a second machine that shares only the
  bucket reads what the first one pushed. Per repository:

      <kind>s/<owner>/<name>/revisions/<rev>/...   the files of an immutable revision (rev = content hash)
      <kind>s/<owner>/<name>/revisions/<rev>.json  its commit record (files, sizes, sha256), written last
      <kind>s/<owner>/<name>/refs/main             the head: {"revision": ..., "history": [...]}

  A revision exists once its record does; the head moves by compare-and-swap on the ref's generation, so
  concurrent pushes never lose or mix a revision and readers see the old head or the new one.

Either way a push returns the `hf://` URI of the exact revision, which is what later stages take.

What a push uploads is first assembled in a temp folder under a staging root (`<CODEPARROT_HOME>/staging`)
by `staging_folder`, which each push holds locked while it lives; a push killed before it could clean up
leaves its folder unlocked, and the next push removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from tqdm.auto import tqdm

from codeparrot.artifacts import ArtifactRef
from codeparrot.errors import ConfigError, DataError, PermanentServiceError, ServiceError
from codeparrot.gcp import GCPConfig
from codeparrot.storage import ABSENT, Conflict, Store, join, locked, open_store

log = logging.getLogger(__name__)

RepoKind = Literal["dataset", "model"]
# The embedded default: a bucket on the GCS emulator, reachable from every machine that reaches it.
DEFAULT_STANDIN_ROOT = "gs://codeparrot-hub"
HEAD = "main"
# Parallel object transfers of one push or fetch (I/O bound).
TRANSFER_THREADS = 8
# Concurrent pushes retry the head's compare-and-swap; each loss means another push just moved it.
HEAD_MOVE_ATTEMPTS = 50
HISTORY_LENGTH = 200
# The lock file inside each staging folder, held (flock) by the push that made it for as long as it lives.
STAGING_LOCK = ".push.lock"
# A staging folder without a lock file was made by an older release, which did not lock: it is taken
# for a dead push's only once it is this old (no push takes an hour to assemble its folder).
UNLOCKED_STALE_S = 3600


@contextlib.contextmanager
def staging_folder(root: str | os.PathLike[str], prefix: str) -> Iterator[Path]:
    """A fresh, empty temp folder under `root` for one push, removed afterwards; folders under `root` left by
    pushes that were killed (their lock is free) are removed first.

    The folder's lock is taken before the root's lock is let go, so a concurrent push sweeping the root
    never sees a live folder unlocked; a dead push's lock is released by the kernel with its process.
    """
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    with locked(base.with_name(f".{base.name}.lock")):
        for gone in _sweep_staging(base):
            log.info("removed %s, left by a push that did not finish", gone)
        folder = Path(tempfile.mkdtemp(dir=base, prefix=prefix))
        handle = open(folder / STAGING_LOCK, "a")  # noqa: SIM115 - held until the folder is removed
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        handle.close()


def _sweep_staging(base: Path) -> list[Path]:
    """Remove the staging folders of dead pushes (caller holds the root's lock); the ones removed."""
    removed = []
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock = folder / STAGING_LOCK
        try:
            if not lock.exists():
                if time.time() - folder.stat().st_mtime < UNLOCKED_STALE_S:
                    continue
                shutil.rmtree(folder, ignore_errors=True)
            else:
                with open(lock, "a") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live push holds it
                    shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # removed meanwhile by its own push
            continue
        removed.append(folder)
    return removed


class PushResult(BaseModel):
    """Where a folder was published: the exact revision as an `hf://` URI, and a link for people."""

    target: Literal["hub", "stand-in"]
    kind: RepoKind
    repo: str
    revision: str
    uri: str
    url: str
    skipped: bool = False


def folder_hash(folder: Path) -> str:
    """sha256 over relative paths and bytes of every file: a folder's content identity."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(file_sha256(path).encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> size and sha256 of every file under `folder` (what a commit record lists)."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class HubSettings:
    """Which Hub the process talks to; resolved once at the edge (CLI, flow) from the environment."""

    token: str | None = None
    endpoint: str | None = None
    offline: bool = True
    standin_root: str = DEFAULT_STANDIN_ROOT

    @classmethod
    def from_env(cls, token: str | None = None) -> HubSettings:
        env = os.environ
        return cls(
            token=token or env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
            endpoint=env.get("HF_ENDPOINT") or None,
            offline=env.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"),
            standin_root=env.get("CODEPARROT_HUB_ROOT") or DEFAULT_STANDIN_ROOT,
        )

    @property
    def use_hub(self) -> bool:
        return not self.offline and bool(self.token or self.endpoint)


def open_hub(settings: HubSettings | None = None, *, gcp: GCPConfig | None = None, api: Any = None) -> Hub:
    """The Hub the settings name: the real one when allowed and configured, else the stand-in."""
    settings = settings or HubSettings.from_env()
    if api is not None or settings.use_hub:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=settings.endpoint, token=settings.token)
        return HubAPI(api, endpoint=settings.endpoint or "https://huggingface.co")
    if settings.token and settings.offline:
        log.warning(
            "a Hub token is configured but HF_HUB_OFFLINE=1: publishing to the stand-in at %s; "
            "set HF_HUB_OFFLINE=0 to use the Hugging Face Hub", settings.standin_root,
        )  # fmt: skip
    return StandIn(open_store(settings.standin_root, gcp=gcp))


class Hub(ABC):
    """What stages need of a Hub: pin a reference to a revision, fetch a revision, push a folder."""

    target: Literal["hub", "stand-in"]
    location: str

    @abstractmethod
    def head(self, kind: RepoKind, repo: str) -> str | None:
        """The head revision of a repository, or None when it does not exist (yet)."""

    @abstractmethod
    def resolve(self, ref: ArtifactRef) -> str:
        """The immutable revision `ref` names (its head when it names none); an error naming `ref` if none."""

    @abstractmethod
    def fetch(self, ref: ArtifactRef, dest: Path) -> dict[str, str] | None:
        """Download pinned `ref` into the empty folder `dest`; the sha256 each file must have, where known."""

    @abstractmethod
    def push(
        self, folder: Path, kind: RepoKind, repo: str, *, private: bool = True,
        content_hash: str | None = None, delete_patterns: list[str] | None = None,
    ) -> PushResult:  # fmt: skip
        """Publish `folder` as the repository's new head revision (no-op when the head holds the same content)."""

    def local_folder(self, ref: ArtifactRef) -> Path | None:
        """A pinned revision's folder when it already lies on this machine's disk, else None."""
        return None


class StandIn(Hub):
    """The Hub stand-in in a Store (see the module docstring for its layout)."""

    target: Literal["stand-in"] = "stand-in"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.location = store.uri

    @staticmethod
    def _repo_key(kind: RepoKind, repo: str) -> str:
        return f"{kind}s/{repo}"

    def _record(self, kind: RepoKind, repo: str, revision: str) -> dict[str, Any] | None:
        found = self.store.read(join(self._repo_key(kind, repo), "revisions", f"{revision}.json"))
        return json.loads(found[0]) if found else None

    def _head_state(self, kind: RepoKind, repo: str) -> tuple[dict[str, Any] | None, str]:
        found = self.store.read(join(self._repo_key(kind, repo), "refs", HEAD))
        return (json.loads(found[0]), found[1]) if found else (None, ABSENT)

    def head(self, kind: RepoKind, repo: str) -> str | None:
        state, _ = self._head_state(kind, repo)
        return state["revision"] if state else None

    def revisions(self, kind: RepoKind, repo: str) -> list[str]:
        """Every committed revision of a repository (any order)."""
        prefix = join(self._repo_key(kind, repo), "revisions")
        return [o.key.rsplit("/", 1)[1].removesuffix(".json") for o in self.store.list(prefix) if o.key.endswith(".json") and o.key.count("/") == prefix.count("/") + 1]

    def resolve(self, ref: ArtifactRef) -> str:
        if ref.revision in (None, HEAD):
            head = self.head(ref.kind, ref.repo)
            if head is None:
                raise DataError(f"{ref}: no such {ref.kind} in the Hub stand-in at {self.location}; publish it first")
            return head
        if self._record(ref.kind, ref.repo, ref.revision) is None:
            known = self.revisions(ref.kind, ref.repo)
            hint = f"known revisions: {', '.join(sorted(known)[:10])}" if known else "the repository does not exist"
            raise DataError(f"{ref}: no revision {ref.revision!r} in the Hub stand-in at {self.location} ({hint})")
        return ref.revision

    def _files(self, ref: ArtifactRef) -> dict[str, dict[str, Any]]:
        assert ref.revision is not None
        record = self._record(ref.kind, ref.repo, ref.revision)
        if record is None:
            raise DataError(f"{ref}: no revision {ref.revision!r} in the Hub stand-in at {self.location}")
        return record["files"]

    def fetch(self, ref: ArtifactRef, dest: Path) -> dict[str, str]:
        files = self._files(ref)
        base = join(self._repo_key(ref.kind, ref.repo), "revisions", str(ref.revision))
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            done = pool.map(lambda rel: self.store.download(join(base, rel), dest / rel), files)
            list(tqdm(done, total=len(files), unit="file", desc=f"fetch {ref}", disable=None))
        return {rel: meta["sha256"] for rel, meta in files.items()}

    def local_folder(self, ref: ArtifactRef) -> Path | None:
        base = join(self._repo_key(ref.kind, ref.repo), "revisions", str(ref.revision))
        folder = self.store.local_path(base)
        if folder is None:
            return None
        for rel, meta in self._files(ref).items():
            path = folder / rel
            if not path.is_file() or path.stat().st_size != meta["size"]:
                raise DataError(f"{ref}: {path} is missing or has the wrong size in the Hub stand-in; republish the revision")
        return folder

    def push(
        self, folder: Path, kind: RepoKind, repo: str, *, private: bool = True,
        content_hash: str | None = None, delete_patterns: list[str] | None = None,
    ) -> PushResult:  # fmt: skip
        files = folder_files(folder)
        content_hash = content_hash or folder_hash(folder)
        revision = content_hash[:12]
        repo_key = self._repo_key(kind, repo)
        record_key = join(repo_key, "revisions", f"{revision}.json")
        if not self.store.exists(record_key):
            base = join(repo_key, "revisions", revision)
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                done = pool.map(lambda rel: self.store.upload(join(base, rel), folder / rel), files)
                list(tqdm(done, total=len(files), unit="file", desc=f"push {repo}", disable=None))
            record = {"revision": revision, "content_sha256": content_hash, "files": files, "time": _now()}
            try:  # the record last: only now does the revision exist
                self.store.write(record_key, json.dumps(record, indent=1, sort_keys=True).encode(), if_generation=ABSENT)
            except Conflict:
                log.info("revision %s of %s was committed concurrently with the same content", revision, repo)
        skipped = self._move_head(kind, repo, revision, content_hash)
        ref = ArtifactRef.hub(kind, repo, revision)
        return PushResult(target="stand-in", kind=kind, repo=repo, revision=revision, uri=str(ref),
                          url=self.store.describe(join(repo_key, "revisions", revision)), skipped=skipped)  # fmt: skip

    def _move_head(self, kind: RepoKind, repo: str, revision: str, content_hash: str) -> bool:
        """Point the head at `revision` by compare-and-swap; True when it pointed there already."""
        key = join(self._repo_key(kind, repo), "refs", HEAD)
        for _ in range(HEAD_MOVE_ATTEMPTS):
            state, generation = self._head_state(kind, repo)
            if state is not None and state["revision"] == revision:
                return True
            history = ([{"revision": state["revision"], "time": state["time"]}, *state["history"]] if state else [])
            new = {"revision": revision, "content_sha256": content_hash, "time": _now(), "history": history[:HISTORY_LENGTH]}
            try:
                self.store.write(key, json.dumps(new, indent=1).encode(), if_generation=generation)
                return False
            except Conflict:
                continue  # another push moved the head in between: read it again
        raise ServiceError(f"could not move the head of {repo} in {self.location}: {HEAD_MOVE_ATTEMPTS} concurrent updates won; retry")


class HubAPI(Hub):
    """The Hugging Face Hub (or a compatible endpoint) through `huggingface_hub.HfApi`."""

    target: Literal["hub"] = "hub"

    def __init__(self, api: Any, *, endpoint: str = "https://huggingface.co") -> None:
        self.api = api
        self.location = endpoint

    def _url(self, kind: RepoKind, repo: str, revision: str) -> str:
        prefix = "datasets/" if kind == "dataset" else ""
        return f"{self.location.rstrip('/')}/{prefix}{repo}/tree/{revision}"

    def _errors(self, what: str) -> Any:
        return _hub_errors(what, self.location)

    def head(self, kind: RepoKind, repo: str) -> str | None:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            with self._errors(f"reading {kind} {repo}"):
                return self.api.repo_info(repo, repo_type=kind).sha
        except RepositoryNotFoundError:
            return None

    def resolve(self, ref: ArtifactRef) -> str:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            with self._errors(f"resolving {ref}"):
                return self.api.repo_info(ref.repo, repo_type=ref.kind, revision=ref.revision or HEAD).sha
        except RevisionNotFoundError as exc:
            raise DataError(f"{ref}: no revision {ref.revision!r} on the Hub at {self.location}") from exc
        except RepositoryNotFoundError as exc:
            raise DataError(f"{ref}: no such {ref.kind} on the Hub at {self.location} (or the token cannot read it)") from exc

    def fetch(self, ref: ArtifactRef, dest: Path) -> None:
        import shutil

        with self._errors(f"downloading {ref}"):
            self.api.snapshot_download(repo_id=ref.repo, repo_type=ref.kind, revision=ref.revision, local_dir=str(dest))
        shutil.rmtree(dest / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping, not the artifact's
        return None

    def push(
        self, folder: Path, kind: RepoKind, repo: str, *, private: bool = True,
        content_hash: str | None = None, delete_patterns: list[str] | None = None,
    ) -> PushResult:  # fmt: skip
        content_hash = content_hash or folder_hash(folder)
        marker = f"codeparrot-content: {content_hash}"
        with self._errors(f"pushing to {repo}"):
            self.api.create_repo(repo, repo_type=kind, private=private, exist_ok=True)
            commits = self.api.list_repo_commits(repo, repo_type=kind)
            head = commits[0] if commits else None
            if head is not None and marker in (head.message or ""):
                revision, skipped = head.commit_id, True
            else:
                info = self.api.upload_folder(
                    repo_id=repo, repo_type=kind, folder_path=str(folder),
                    commit_message=f"Publish {kind} ({content_hash[:12]})", commit_description=marker,
                    delete_patterns=delete_patterns,
                )  # fmt: skip
                revision, skipped = getattr(info, "oid", None) or str(info), False
        ref = ArtifactRef.hub(kind, repo, revision)
        return PushResult(target="hub", kind=kind, repo=repo, revision=revision, uri=str(ref),
                          url=self._url(kind, repo, revision), skipped=skipped)  # fmt: skip


class _hub_errors:
    """Hub HTTP errors as ours: 4xx (not 429) are permanent, the rest retryable; not-found passes through."""

    def __init__(self, what: str, where: str) -> None:
        self.what, self.where = what, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: Any, exc: BaseException | None, _tb: Any) -> bool:
        import httpx
        from huggingface_hub.errors import (
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if exc is None or isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
            return False
        if isinstance(exc, OfflineModeIsEnabled):
            raise ConfigError(f"{self.what}: HF_HUB_OFFLINE=1 forbids talking to the Hub at {self.where}; set HF_HUB_OFFLINE=0") from exc
        if isinstance(exc, HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status < 500 and status != 429:
                raise PermanentServiceError(f"the Hub at {self.where} refused {self.what} ({status}): {exc}") from exc
            raise ServiceError(f"the Hub at {self.where} failed while {self.what}: {exc}; retry later") from exc
        if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
            raise ServiceError(f"the Hub at {self.where} is unreachable while {self.what}: {exc}; retry later") from exc
        return False


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
