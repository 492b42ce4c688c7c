"""Atomic, self-describing checkpoints on a local disk or GCS, behind one small storage interface.

A checkpoint is a folder `step-00000030/` holding model, optimizer, train state (step, tokens, loader
position, scheduler, grad scaler, config hash) and one RNG file per rank. It counts only once its
`COMMITTED` marker exists, and the marker is written last: locally files go to `step-XXXXXXXX.tmp/`, the
folder is renamed, then the marker is written; on GCS the files are uploaded, then the marker with
`if_generation_match=0`. A folder without its marker is half-written and never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from codeparrot.errors import ServiceError

log = logging.getLogger(__name__)

MARKER = "COMMITTED"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")


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
        if (target / MARKER).is_file():
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
