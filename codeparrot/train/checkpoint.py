"""Atomic, self-describing checkpoints on a local disk or GCS, behind one small storage interface.

A checkpoint is a folder `step-00000030/` holding model, optimizer, train state (step, tokens, loader
position, scheduler, grad scaler, config hash) and one RNG file per rank. It counts only once its
`COMMITTED` marker exists, and the marker is written last: locally files go to `step-XXXXXXXX.tmp/`, the
folder is renamed, then the marker is written; on GCS the files are uploaded, then the marker with
`if_generation_match=0`. A folder without its marker is half-written and never loaded.

The marker records each file's size and sha256, so a checkpoint damaged after its commit (a truncated
file, a bad disk, a partial copy) is recognised before anything is loaded: `resume_point` takes the newest
checkpoint that verifies, moves newer damaged ones aside (`step-XXXXXXXX.corrupt-TIME`, kept for
inspection) and refuses to start over, without deleting anything, when checkpoints exist but none verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codeparrot.errors import NO_SPACE, CodeParrotError, DiskFull, ServiceError

log = logging.getLogger(__name__)

MARKER = "COMMITTED"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")
# What a checkpoint needs beyond its RNG files: a folder without its marker that holds these is complete
# (a crash between rename and marker, or a marker deleted by hand), not half-written.
ESSENTIAL_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
# Below this much free space a failed write is taken for a full disk whatever the library's message says
# (torch reports ENOSPC as "enforce fail ... unexpected pos").
DISK_FULL_BYTES = 16 * 2**20


class CheckpointError(CodeParrotError):
    """Checkpoints exist but none can be resumed; the message lists why each failed and what to do."""


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng-{rank:05d}.pt"


class CheckpointStore(ABC):
    """Where checkpoints live. Ranks write files into `staging(step)`; rank 0 commits."""

    uri: str

    @abstractmethod
    def committed_steps(self) -> list[int]:
        """Steps with a committed marker, ascending."""

    @abstractmethod
    def discard_partial(self) -> list[str]:
        """Remove half-written checkpoints (no marker); returns what was removed."""

    @abstractmethod
    def staging(self, step: int) -> Path:
        """The local folder this process writes the checkpoint's files into (created)."""

    @abstractmethod
    def upload(self, step: int, names: list[str]) -> None:
        """Make this process's staged files part of the checkpoint (each rank, before the barrier)."""

    @abstractmethod
    def commit(self, step: int, meta: dict[str, Any]) -> None:
        """Make the checkpoint visible: everything is in place, write the marker last (rank 0)."""

    @abstractmethod
    def fetch(self, step: int) -> Path:
        """A local folder with the files of a committed checkpoint."""

    @abstractmethod
    def delete(self, step: int) -> None:
        """Remove a checkpoint, marker first so a half-deleted one is never taken as valid."""

    @abstractmethod
    def unmarked_complete(self) -> list[int]:
        """Steps whose folder holds the essential files but no marker (ascending)."""

    @abstractmethod
    def quarantine(self, step: int) -> str:
        """Move a checkpoint aside under a name loading never matches; returns where it went."""

    def latest(self) -> int | None:
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` committed checkpoints; returns the deleted steps."""
        old = self.committed_steps()[:-keep_last] if keep_last > 0 else []
        for step in old:
            self.delete(step)
        return old

    def describe(self, step: int) -> str:
        return f"{self.uri.rstrip('/')}/{step_name(step)}"


class LocalStore(CheckpointStore):
    """Checkpoints in a local (or shared) folder: stage in `.tmp`, rename, marker last."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def committed_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = []
        for child in self.root.iterdir():
            m = _STEP_RE.match(child.name)
            if m and (child / MARKER).is_file():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def discard_partial(self) -> list[str]:
        removed = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                partial = child.name.endswith(".tmp") or (_STEP_RE.match(child.name) and not (child / MARKER).exists())
                if partial and child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(str(child))
        return removed

    def unmarked_complete(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(
            int(m.group(1))
            for child in self.root.iterdir()
            if (m := _STEP_RE.match(child.name))
            and not (child / MARKER).exists()
            and all((child / name).is_file() for name in ESSENTIAL_FILES)
        )

    def quarantine(self, step: int) -> str:
        target = self.root / f"{step_name(step)}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.replace(self.root / step_name(step), target)
        _fsync_dir(self.root)
        return str(target)

    def staging(self, step: int) -> Path:
        folder = self.root / f"{step_name(step)}.tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def upload(self, step: int, names: list[str]) -> None:
        folder = self.root / f"{step_name(step)}.tmp"
        for name in names:
            with open(folder / name, "rb") as fh:
                os.fsync(fh.fileno())

    def commit(self, step: int, meta: dict[str, Any]) -> None:
        staged = self.root / f"{step_name(step)}.tmp"
        final = self.root / step_name(step)
        if final.exists():  # a half-committed folder of an earlier attempt at this step
            shutil.rmtree(final)
        os.replace(staged, final)
        _atomic_write_text(final / MARKER, json.dumps(meta, indent=1, sort_keys=True))
        _fsync_dir(self.root)

    def fetch(self, step: int) -> Path:
        return self.root / step_name(step)

    def delete(self, step: int) -> None:
        folder = self.root / step_name(step)
        (folder / MARKER).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


class GCSStore(CheckpointStore):
    """Checkpoints under gs://bucket/prefix: files uploaded first, the marker last, created only once."""

    def __init__(self, uri: str, *, scratch: str | os.PathLike[str], client: Any = None) -> None:
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} names no bucket: use gs://BUCKET/PREFIX")
        self.uri = uri.rstrip("/")
        self.prefix = prefix.strip("/")
        self.scratch = Path(scratch)
        self._client = client
        self._bucket_name = bucket

    @property
    def bucket(self) -> Any:
        if self._client is None:
            from codeparrot.gcp import GCPConfig, storage_client

            # The same client factory as export/download: emulator endpoint or Google credentials by config.
            self._client = storage_client(GCPConfig.from_env())
        return self._client.bucket(self._bucket_name)

    def _key(self, step: int, name: str = "") -> str:
        parts = [p for p in (self.prefix, step_name(step), name) if p]
        return "/".join(parts)

    def _list(self) -> list[Any]:
        try:
            prefix = f"{self.prefix}/" if self.prefix else ""
            return list(self.bucket.client.list_blobs(self._bucket_name, prefix=prefix))
        except Exception as exc:
            raise ServiceError(f"cannot list checkpoints under {self.uri}: {exc}; check the bucket and credentials") from exc

    def _by_step(self) -> dict[int, list[Any]]:
        steps: dict[int, list[Any]] = {}
        base = f"{self.prefix}/" if self.prefix else ""
        for blob in self._list():
            head = blob.name[len(base) :].split("/", 1)[0]
            m = _STEP_RE.match(head)
            if m:
                steps.setdefault(int(m.group(1)), []).append(blob)
        return steps

    def committed_steps(self) -> list[int]:
        return sorted(s for s, blobs in self._by_step().items() if any(b.name.endswith(f"/{MARKER}") for b in blobs))

    def unmarked_complete(self) -> list[int]:
        found = []
        for step, blobs in self._by_step().items():
            names = {b.name.rsplit("/", 1)[1] for b in blobs}
            if MARKER not in names and all(name in names for name in ESSENTIAL_FILES):
                found.append(step)
        return sorted(found)

    def quarantine(self, step: int) -> str:
        """Copy the checkpoint's objects under `step-XXXXXXXX.corrupt-TIME/` (server side), then delete them."""
        aside = f"{step_name(step)}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        bucket = self.bucket
        try:
            blobs = sorted(self._by_step().get(step, []), key=lambda b: not b.name.endswith(f"/{MARKER}"))
            for blob in blobs:
                bucket.copy_blob(blob, bucket, "/".join(p for p in (self.prefix, aside, blob.name.rsplit("/", 1)[1]) if p))
            self.delete(step)
        except Exception as exc:
            raise ServiceError(f"cannot move checkpoint {self.describe(step)} aside: {exc}") from exc
        return f"{self.uri}/{aside}"

    def discard_partial(self) -> list[str]:
        removed = []
        for step, blobs in self._by_step().items():
            if not any(b.name.endswith(f"/{MARKER}") for b in blobs):
                for blob in blobs:
                    blob.delete()
                removed.append(self.describe(step))
        return removed

    def staging(self, step: int) -> Path:
        folder = self.scratch / f"{step_name(step)}.upload-{os.getpid()}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def upload(self, step: int, names: list[str]) -> None:
        folder = self.staging(step)
        try:
            for name in names:
                self.bucket.blob(self._key(step, name)).upload_from_filename(str(folder / name))
        except Exception as exc:
            raise ServiceError(f"cannot upload checkpoint files to {self.describe(step)}: {exc}") from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, step: int, meta: dict[str, Any]) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._key(step, MARKER))
        try:
            blob.upload_from_string(json.dumps(meta, indent=1, sort_keys=True), if_generation_match=0)
        except PreconditionFailed:
            log.warning("checkpoint %s was already committed; keeping the first commit", self.describe(step))
        except Exception as exc:
            raise ServiceError(f"cannot commit checkpoint {self.describe(step)}: {exc}") from exc

    def fetch(self, step: int) -> Path:
        target = self.scratch / step_name(step)
        try:
            marker = self.bucket.blob(self._key(step, MARKER)).download_as_bytes()
        except Exception as exc:
            raise ServiceError(f"cannot read the marker of checkpoint {self.describe(step)}: {exc}") from exc
        # A step may be written again after a damaged one was moved aside: reuse a copy of this very commit only.
        if (target / MARKER).is_file() and (target / MARKER).read_bytes() == marker:
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f"{step_name(step)}.", dir=self.scratch))
        try:
            for blob in self._by_step().get(step, []):
                blob.download_to_filename(str(tmp / blob.name.rsplit("/", 1)[1]))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except Exception as exc:
            raise ServiceError(f"cannot download checkpoint {self.describe(step)}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def delete(self, step: int) -> None:
        blobs = self._by_step().get(step, [])
        for blob in sorted(blobs, key=lambda b: not b.name.endswith(f"/{MARKER}")):
            blob.delete()
        shutil.rmtree(self.scratch / step_name(step), ignore_errors=True)


def open_store(uri: str | os.PathLike[str], *, scratch: str | os.PathLike[str]) -> CheckpointStore:
    """A LocalStore for a path, a GCSStore for gs://bucket/prefix (downloads go under `scratch`)."""
    text = str(uri)
    if text.startswith("gs://"):
        Path(scratch).mkdir(parents=True, exist_ok=True)
        return GCSStore(text, scratch=scratch)
    return LocalStore(text)


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MARKER).read_text())


# ---------------------------------------------------------------------------- integrity


def file_digest(path: Path) -> dict[str, Any]:
    """What the marker records of one file: its size and sha256 (~1 GB/s: a 124M model's 1.5 GB in ~2 s)."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def verify(folder: Path) -> str | None:
    """None if the checkpoint in `folder` is whole, else why not (the first problem found)."""
    try:
        meta = read_meta(folder)
    except (OSError, ValueError) as exc:
        return f"its {MARKER} marker cannot be read ({exc})"
    files = meta.get("files")
    if isinstance(files, dict):
        for name, want in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != want["size"]:
                return f"{name} is {size} bytes, its marker says {want['size']}"
            got = file_digest(path)["sha256"]
            if got != want["sha256"]:
                return f"{name} does not match its checksum (sha256 {got[:12]}..., marker {want['sha256'][:12]}...)"
        return None
    # Markers of releases before checksums list names only: check each file's own structure instead
    # (torch files are zip archives with a CRC per entry).
    for name in files or ESSENTIAL_FILES:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            if name.endswith(".pt"):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{name} has a damaged entry {bad}"
            elif name.endswith(".json"):
                json.loads(path.read_text())
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            return f"{name} is damaged ({exc})"
    return None


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: a verified checkpoint (or none: step 0), and what was moved aside to get there."""

    step: int | None = None
    folder: Path | None = None
    skipped: list[str] = field(default_factory=list)


def resume_point(store: CheckpointStore, *, restart: bool = False) -> ResumePoint:
    """The newest checkpoint that verifies; damaged newer ones are moved aside, never deleted.

    With checkpoints present but none valid this refuses (CheckpointError) unless `restart`, which then
    moves every one of them aside and starts at step 0. `restart` never discards a valid checkpoint, so
    a preempted run retried with it still resumes. Half-written saves (no marker, files missing) go."""
    problems: list[tuple[int, str]] = []
    for step in reversed(store.committed_steps()):
        folder = store.fetch(step)
        problem = verify(folder)
        if problem is None:
            moved = []
            for bad, why in problems:
                moved.append(store.quarantine(bad))
                log.warning("skipped checkpoint %s: %s; moved it to %s", store.describe(bad), why, moved[-1])
            for partial in store.discard_partial():
                log.warning("ignoring half-written checkpoint %s", partial)
            return ResumePoint(step, folder, moved)
        log.warning("checkpoint %s does not verify: %s; trying the one before", store.describe(step), problem)
        problems.append((step, problem))
    unmarked = store.unmarked_complete()
    if (problems or unmarked) and not restart:
        why = [f"{step_name(s)}: {p}" for s, p in problems] + [f"{step_name(s)}: no {MARKER} marker" for s in unmarked]
        raise CheckpointError(
            f"no checkpoint under {store.uri} can be resumed ({'; '.join(why)}); nothing was deleted. Restore "
            "them, or rerun with --restart to move them aside and start over from step 0"
        )
    moved = [store.quarantine(step) for step in sorted({*(s for s, _ in problems), *unmarked})]
    for where in moved:
        log.warning("restart: moved the unusable checkpoint aside to %s", where)
    for partial in store.discard_partial():
        log.warning("ignoring half-written checkpoint %s", partial)
    return ResumePoint(skipped=moved)


def save_file(save: Any, obj: Any, path: Path) -> None:
    """`save(obj, path)` (torch.save), turning a full disk into DiskFull naming the folder."""
    try:
        save(obj, path)
    except (OSError, RuntimeError) as exc:
        free = _free_bytes(path.parent)
        full = isinstance(exc, OSError) and exc.errno in NO_SPACE
        if not (full or (free is not None and free < DISK_FULL_BYTES) or _write_fails_for_space(path)):
            raise
        path.unlink(missing_ok=True)
        raise DiskFull(
            f"no space left on the device writing {path.name} to {path.parent} ({(free or 0) / 2**20:.1f} MiB "
            "free): free space or point --checkpoint-dir elsewhere, then rerun to resume from the last checkpoint"
        ) from exc


def _write_fails_for_space(path: Path) -> bool:
    """Whether writing 1 MiB to `path` now fails with ENOSPC/EDQUOT (torch's own error carries no errno)."""
    try:
        with open(path, "wb") as fh:
            fh.write(bytes(2**20))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.errno in NO_SPACE
    return False


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy, torch and CUDA RNG states (tensors and plain values only)."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
