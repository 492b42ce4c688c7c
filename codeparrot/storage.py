"""Objects under a local folder or a `gs://bucket/prefix`, behind one small interface.

Shared artifacts (the Hub stand-in, token sets) are written through a `Store`, so the same code runs
against a local disk (one machine, tests) and Cloud Storage (machines that share only a bucket):

- `write(key, data, if_generation=...)` replaces one object atomically, optionally only while it is
  still the generation read before (compare-and-swap; `"0"` means "only if absent"). On GCS that is the
  service's `if_generation_match`; on a local disk an exclusive file lock around compare and rename.
- `upload` and `download` move whole files; nobody sees one half-written (a temp name and a rename
  locally; GCS objects appear whole, and the client checks their crc32c on download).
- `list(prefix)` gives every object under a prefix with its size and generation.

Keys are relative, '/'-separated and may not climb out of the store (no '.', '..' or empty segments).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from codeparrot.errors import CodeParrotError, ConfigError, DataError
from codeparrot.gcp import GCPConfig, ensure_bucket, parse_gs_uri, service_errors, storage_client

ABSENT = "0"  # the generation of an object that does not exist, as GCS preconditions spell it


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    generation: str
    crc32c: str | None = None


class Conflict(CodeParrotError):
    """The object changed since it was read, or exists where it must not: read it again and decide anew."""


def check_key(key: str) -> str:
    """`key` if it is a safe relative object name, else a DataError naming it."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise DataError(f"object name {key!r} is not a plain relative name (no '.', '..' or empty parts); refusing it")
    return key


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing) for the block; other processes wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` so readers see the old bytes or the new ones, never a mix (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _is_scratch(name: str) -> bool:
    """Temp and lock files this module leaves beside objects; never listed as objects."""
    return name.startswith(".") and (".tmp-" in name or name.endswith(".lock"))


class Store(ABC):
    """Objects under one root; see the module docstring for what each operation guarantees."""

    uri: str

    def describe(self, key: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """The store of the objects under `prefix`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under `prefix` (all of them by default), keys relative to this store, sorted."""

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and generation, or None when it does not exist."""

    @abstractmethod
    def write(self, key: str, data: bytes, *, if_generation: str | None = None) -> str:
        """Replace the object (only if its generation is still `if_generation`, when given); its new generation."""

    @abstractmethod
    def upload(self, key: str, path: Path) -> None:
        """Store a local file as the object."""

    @abstractmethod
    def download(self, key: str, dest: Path) -> None:
        """Copy the object to a local file, atomically."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    def local_path(self, key: str = "") -> Path | None:
        """Where the object lies on this machine's disk, for stores that are local; else None."""
        return None

    def exists(self, key: str) -> bool:
        return self.read(key) is not None


class LocalStore(Store):
    """Objects as files under a folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / Path(*PurePosixPath(check_key(key)).parts)

    @staticmethod
    def _generation(st: os.stat_result) -> str:
        # A rename installs a new inode, so every write (temp file + rename) changes one of the two.
        return f"{st.st_mtime_ns}.{st.st_ino}"

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        top = self._path(prefix) if prefix else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not _is_scratch(d)]
            for name in filenames:
                if _is_scratch(name):
                    continue
                path = Path(dirpath) / name
                st = path.stat()
                key = path.relative_to(self.root).as_posix()
                found.append(ObjectInfo(key, st.st_size, self._generation(st)))
        return sorted(found, key=lambda o: o.key)

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read(), self._generation(os.fstat(fh.fileno()))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, key: str, data: bytes, *, if_generation: str | None = None) -> str:
        path = self._path(key)
        if if_generation is None:
            atomic_write_bytes(path, data)
            return self._generation(path.stat())
        with locked(path.with_name(f".{path.name}.lock")):
            current = self._generation(path.stat()) if path.exists() else ABSENT
            if current != if_generation:
                raise Conflict(f"{self.describe(key)} changed since it was read (generation {current}, not {if_generation})")
            atomic_write_bytes(path, data)
            return self._generation(path.stat())

    def upload(self, key: str, path: Path) -> None:
        _copy_atomic(path, self._path(key))

    def download(self, key: str, dest: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise DataError(f"{self.describe(key)} does not exist")
        _copy_atomic(source, dest)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.lock").unlink(missing_ok=True)

    def local_path(self, key: str = "") -> Path:
        return self._path(key) if key else self.root


class GCSStore(Store):
    """Objects under gs://bucket/prefix, through google-cloud-storage (Google or an emulator, by config)."""

    def __init__(self, uri: str, *, gcp: GCPConfig | None = None, client: Any = None) -> None:
        bucket, prefix = parse_gs_uri(uri)
        if prefix.strip("/"):
            check_key(prefix.strip("/"))
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self._gcp = gcp
        self._client = client
        self._bucket_checked = False

    @property
    def gcp(self) -> GCPConfig:
        if self._gcp is None:
            self._gcp = GCPConfig.from_env()
        return self._gcp

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = storage_client(self.gcp)
        return self._client

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return service_errors(f"Cloud Storage ({self.uri})", self.gcp.storage_endpoint)

    def _name(self, key: str) -> str:
        return join(self.prefix, check_key(key))

    def _blob(self, key: str) -> Any:
        return self.client.bucket(self.bucket_name).blob(self._name(key))

    def _ensure_bucket(self) -> None:
        """Writers create the bucket on first use (the emulator starts empty; Google needs the permission)."""
        if not self._bucket_checked:
            with self._errors():
                ensure_bucket(self.client, self.bucket_name, self.gcp.location, self.gcp)
            self._bucket_checked = True

    def child(self, prefix: str) -> GCSStore:
        store = GCSStore(f"gs://{self.bucket_name}/{join(self.prefix, check_key(prefix))}", gcp=self._gcp, client=self._client)
        store._bucket_checked = self._bucket_checked
        return store

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        from google.api_core import exceptions as gexc

        base = join(self.prefix, check_key(prefix) if prefix else "")
        base = f"{base}/" if base else ""
        with self._errors():
            try:
                blobs = list(self.client.list_blobs(self.bucket_name, prefix=base, timeout=self.gcp.timeout_s))
            except gexc.NotFound:  # no bucket yet: nothing under it
                return []
        own = f"{self.prefix}/" if self.prefix else ""
        return sorted(
            (ObjectInfo(b.name[len(own) :], int(b.size or 0), str(b.generation), b.crc32c) for b in blobs if not b.name.endswith("/")),
            key=lambda o: o.key,
        )

    def read(self, key: str) -> tuple[bytes, str] | None:
        from google.api_core import exceptions as gexc

        with self._errors():
            try:
                blob = self.client.bucket(self.bucket_name).get_blob(self._name(key), timeout=self.gcp.timeout_s)
                if blob is None:
                    return None
                # The blob names its generation, so this reads exactly the version just looked up.
                return blob.download_as_bytes(timeout=self.gcp.timeout_s), str(blob.generation)
            except gexc.NotFound:  # deleted in between, or no bucket
                return None

    def write(self, key: str, data: bytes, *, if_generation: str | None = None) -> str:
        from google.api_core import exceptions as gexc

        self._ensure_bucket()
        blob = self._blob(key)
        match = int(if_generation) if if_generation is not None else None
        with self._errors():
            try:
                blob.upload_from_string(data, if_generation_match=match, timeout=self.gcp.timeout_s)
            except gexc.PreconditionFailed as exc:
                raise Conflict(f"{self.describe(key)} changed since it was read (expected generation {if_generation})") from exc
        return str(blob.generation)

    def upload(self, key: str, path: Path) -> None:
        self._ensure_bucket()
        with self._errors():
            self._blob(key).upload_from_filename(str(path), timeout=self.gcp.timeout_s)

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(dest)
        try:
            with self._errors():
                self._blob(key).download_to_filename(str(tmp), timeout=self.gcp.timeout_s)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        from google.api_core import exceptions as gexc

        with self._errors(), contextlib.suppress(gexc.NotFound):
            self._blob(key).delete(timeout=self.gcp.timeout_s)


def file_uri_path(text: str) -> str:
    """The path a `file:` URI names (`file:///p`, `file://localhost/p`, `file:/p`, %-escapes decoded, as
    RFC 8089 and `Path.as_uri()` write them); any other text unchanged. Only this machine's absolute paths."""
    if text[:5].lower() != "file:":
        return text
    from urllib.parse import unquote

    rest = text[5:]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host and host.lower() != "localhost":
            raise ConfigError(f"{text!r} names host {host!r}: a file:// URI needs an absolute path on this machine (file:///abs/path)")
        rest = slash + path
    if not rest.startswith("/"):
        raise ConfigError(f"{text!r}: a file:// URI needs an absolute path (file:///abs/path)")
    return unquote(rest)


def open_store(uri: str | os.PathLike[str], *, gcp: GCPConfig | None = None) -> Store:
    """A GCSStore for `gs://bucket/prefix`, a LocalStore for a folder (or `file://` URI)."""
    text = os.fspath(uri)
    if text.startswith("gs://"):
        return GCSStore(text, gcp=gcp)
    return LocalStore(file_uri_path(text))


def _copy_atomic(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(dest)
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
