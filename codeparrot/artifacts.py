"""Artifacts by reference: one URI names a dataset, tokenizer, token set, checkpoint folder or model.

Stages hand each other these references, never machine-local paths, so a worker that starts with an
empty disk can run any stage:

    hf://datasets/OWNER/NAME[@REV]   a dataset repo on the Hub or its stand-in (no @REV: the head)
    hf://OWNER/NAME[@REV]            a model repo (tokenizers and models)
    gs://BUCKET/PREFIX               every object under a Cloud Storage prefix
    /a/local/path, file:///a/path    a file or folder on this machine

`Resolver.resolve(ref)` gives a local, read-only copy keyed on the artifact's immutable identity (the Hub
commit or stand-in revision; for gs:// a digest of the objects' generations; for a local path its
content hash). A copy is fetched once per machine into `<CODEPARROT_HOME>/artifacts`: into a temp folder,
checked against the source's checksums, renamed into place, and only then recorded by a marker beside
it, under a file lock so concurrent resolvers fetch once. A hit re-checks the marker's sizes (and the
sha256 of any file whose size or mtime moved), so a half-downloaded or damaged copy is fetched again.
`hf://` references resolve against the Hub or its stand-in by configuration (`codeparrot.hub`), through
the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from codeparrot.errors import ConfigError, DataError, writing
from codeparrot.gcp import BUCKET_RE
from codeparrot.storage import atomic_write_bytes, check_key, file_uri_path, locked

if TYPE_CHECKING:
    from collections.abc import Callable

    from codeparrot.gcp import GCPConfig
    from codeparrot.hub import Hub

log = logging.getLogger(__name__)

Scheme = Literal["hf", "gs", "local"]
# Hub names: letters, digits, '-', '_', '.'; starting with a letter or digit ('..' refused separately).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Revisions: commit ids, stand-in content hashes, branch or tag names without slashes.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Hub commit ids (40 hex) and stand-in revisions (12 hex) never move; branch names like "main" do.
_COMMIT = re.compile(r"^[0-9a-f]{12}$|^[0-9a-f]{40}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
FORMS = "hf://datasets/OWNER/NAME[@REV], hf://OWNER/NAME[@REV], gs://BUCKET/PREFIX, or a local path"


@dataclass(frozen=True)
class ArtifactRef:
    """A parsed artifact URI. `str()` gives it back in canonical form."""

    scheme: Scheme
    kind: Literal["dataset", "model"] = "model"  # hf only
    repo: str = ""  # hf: OWNER/NAME
    revision: str | None = None  # hf: None means the head
    bucket: str = ""  # gs
    prefix: str = ""  # gs
    path: str = ""  # local: absolute

    @classmethod
    def parse(cls, text: str | os.PathLike[str] | ArtifactRef) -> ArtifactRef:
        """Parse and validate; a ConfigError naming the URI and the accepted forms when it is not one."""
        if isinstance(text, ArtifactRef):
            return text
        raw = os.fspath(text).strip()
        if not raw:
            raise ConfigError(f"an empty artifact reference: give one of {FORMS}")
        m = _SCHEME.match(raw)
        if m is not None and m.group(1).lower() == "file":  # file:///p, file://localhost/p, file:/p
            return cls(scheme="local", path=str(Path(file_uri_path(raw))))
        if m is None or not m.group(2) or len(m.group(1)) == 1:  # no scheme://: a path (C: is a drive)
            return cls(scheme="local", path=str(Path(raw).expanduser().absolute()))
        scheme, rest = m.group(1).lower(), raw[m.end() :]
        if scheme == "hf":
            return cls._parse_hf(raw, rest)
        if scheme == "gs":
            return cls._parse_gs(raw, rest)
        raise ConfigError(f"{raw!r} has an unsupported scheme {scheme!r}: use {FORMS}")

    @classmethod
    def _parse_hf(cls, raw: str, rest: str) -> ArtifactRef:
        body, at, revision = rest.partition("@")
        if at and not revision:
            raise ConfigError(f"{raw!r} ends with '@' but names no revision: write @REV, or leave '@' out for the head")
        if at and (not _REVISION.match(revision) or ".." in revision):
            raise ConfigError(f"{raw!r}: revision {revision!r} must be letters, digits, '-', '_', '.' (a commit id or branch)")
        parts = body.split("/")
        kind: Literal["dataset", "model"] = "model"
        if parts[0] in ("datasets", "models"):
            kind = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:]
        if len(parts) != 2 or not all(_NAME.match(p) and ".." not in p for p in parts):
            raise ConfigError(f"{raw!r} does not name a repo as OWNER/NAME (letters, digits, '-', '_', '.'): use {FORMS}")
        return cls(scheme="hf", kind=kind, repo="/".join(parts), revision=revision or None)

    @classmethod
    def _parse_gs(cls, raw: str, rest: str) -> ArtifactRef:
        bucket, _, prefix = rest.partition("/")
        if not BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError(f"{raw!r}: {bucket!r} is not a bucket name (lowercase letters, digits, '-', '_', '.')")
        prefix = prefix.strip("/")
        if not prefix:
            raise ConfigError(f"{raw!r} names a whole bucket: give a prefix, gs://{bucket}/PREFIX")
        try:
            check_key(prefix)
        except DataError:
            raise ConfigError(f"{raw!r}: the prefix may not contain '.', '..' or empty parts") from None
        return cls(scheme="gs", bucket=bucket, prefix=prefix)

    @classmethod
    def hub(cls, kind: Literal["dataset", "model"], repo: str, revision: str | None = None) -> ArtifactRef:
        """The `hf://` reference of a repo (validated like a parsed one)."""
        prefix = "datasets/" if kind == "dataset" else ""
        return cls.parse(f"hf://{prefix}{repo}" + (f"@{revision}" if revision else ""))

    def __str__(self) -> str:
        if self.scheme == "hf":
            prefix = "datasets/" if self.kind == "dataset" else ""
            return f"hf://{prefix}{self.repo}" + (f"@{self.revision}" if self.revision else "")
        if self.scheme == "gs":
            return f"gs://{self.bucket}/{self.prefix}"
        return self.path

    @property
    def pinned(self) -> bool:
        """Whether the reference names an exact version (hf needs @REV; gs and local name their content)."""
        return self.scheme != "hf" or self.revision is not None

    def at(self, revision: str) -> ArtifactRef:
        return replace(self, revision=revision)


def parse_ref(text: str | os.PathLike[str] | ArtifactRef) -> ArtifactRef:
    return ArtifactRef.parse(text)


@dataclass(frozen=True)
class Resolved:
    """A local, read-only copy of an artifact: the pinned reference, where it lies, its identity."""

    ref: ArtifactRef
    path: Path
    identity: str


class Resolver:
    """Pins and fetches references; the Hub, GCP settings and cache folder are given, not read from globals."""

    def __init__(self, hub: Hub, cache_root: str | os.PathLike[str], *, gcp: GCPConfig | None = None) -> None:
        self.hub = hub
        self.cache_root = Path(cache_root)
        self._gcp = gcp

    @classmethod
    def from_env(cls, token: str | None = None, *, cache_root: str | os.PathLike[str] | None = None) -> Resolver:
        """The Hub and GCS the environment configures, caching under `<CODEPARROT_HOME>/artifacts`."""
        from codeparrot.env import home
        from codeparrot.gcp import GCPConfig
        from codeparrot.hub import HubSettings, open_hub

        gcp = GCPConfig.from_env()
        hub = open_hub(HubSettings.from_env(token), gcp=gcp)
        return cls(hub, cache_root if cache_root is not None else home() / "artifacts", gcp=gcp)

    # -- pinning ------------------------------------------------------------------------------------
    def pin(self, ref: str | os.PathLike[str] | ArtifactRef) -> ArtifactRef:
        """`ref` with its exact revision (an `hf://` head becomes `@<revision>`); others are returned as they are."""
        ref = ArtifactRef.parse(ref)
        if ref.scheme == "hf":
            return ref.at(self.hub.resolve(ref))
        return ref

    def identity(self, ref: str | os.PathLike[str] | ArtifactRef) -> str:
        """What a cache downstream keys on: the revision, the objects' generations, or the content hash."""
        ref = self.pin(ref)
        if ref.scheme == "hf":
            assert ref.revision is not None
            return ref.revision
        if ref.scheme == "gs":
            return _listing_identity(self._objects(ref), ref)
        return local_identity(_existing(ref))

    # -- resolving ----------------------------------------------------------------------------------
    def resolve(self, ref: str | os.PathLike[str] | ArtifactRef) -> Resolved:
        """A local read-only copy of the artifact (fetched once per machine); an error naming `ref` if unreadable."""
        ref = ArtifactRef.parse(ref)
        if ref.scheme == "hf" and ref.revision and _COMMIT.match(ref.revision):
            # A commit id names one content for ever: a verified copy needs no Hub (a resume survives its outage).
            folder = self.cache_root / "hf" / f"{ref.kind}s" / ref.repo / ref.revision
            if verify(folder) is None:
                return Resolved(ref, folder, ref.revision)
        ref = self.pin(ref)
        if ref.scheme == "local":
            path = _existing(ref)
            return Resolved(ref, path, local_identity(path))
        if ref.scheme == "hf":
            assert ref.revision is not None
            on_disk = self.hub.local_folder(ref)
            if on_disk is not None:
                return Resolved(ref, on_disk, ref.revision)
            folder = self.cache_root / "hf" / f"{ref.kind}s" / ref.repo / ref.revision
            materialize(folder, str(ref), lambda tmp: self.hub.fetch(ref, tmp))
            return Resolved(ref, folder, ref.revision)
        objects = self._objects(ref)
        ident = _listing_identity(objects, ref)
        folder = self.cache_root / "gs" / ref.bucket / f"{ref.prefix}@{ident}"
        materialize(folder, str(ref), lambda tmp: self._fetch_gs(ref, objects, tmp))
        return Resolved(ref, folder, ident)

    def _objects(self, ref: ArtifactRef) -> list[tuple[str, int, str]]:
        from codeparrot.storage import GCSStore

        store = GCSStore(str(ref), gcp=self._gcp)
        objects = [(o.key, o.size, o.generation) for o in store.list()]
        if not objects:
            raise DataError(f"{ref}: no objects under this prefix; check the URI (and that the stage that writes it finished)")
        return objects

    def _fetch_gs(self, ref: ArtifactRef, objects: list[tuple[str, int, str]], dest: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from codeparrot.storage import GCSStore

        store = GCSStore(str(ref), gcp=self._gcp)

        def one(obj: tuple[str, int, str]) -> None:
            key, size, _generation = obj
            target = dest / Path(*check_key(key).split("/"))
            store.download(key, target)
            if target.stat().st_size != size:
                raise DataError(f"{store.describe(key)} changed while it was being fetched ({target.stat().st_size} bytes, listed {size})")

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(8) as pool:
            list(tqdm(pool.map(one, objects), total=len(objects), unit="file", desc=f"fetch {ref}", disable=None))


def _existing(ref: ArtifactRef) -> Path:
    path = Path(ref.path)
    if not path.exists():
        raise DataError(f"{ref}: no such file or folder on this machine; pass a URI another machine can read ({FORMS})")
    return path


def _listing_identity(objects: list[tuple[str, int, str]], ref: ArtifactRef) -> str:
    """A digest of every object's name, size and generation: changes whenever any object does."""
    h = hashlib.sha256(str(ref).encode())
    for key, size, generation in sorted(objects):
        h.update(f"\0{key}\0{size}\0{generation}".encode())
    return h.hexdigest()[:16]


def local_identity(path: Path) -> str:
    """Content hash (16 hex) of a local file or folder, remembered while its files' sizes and mtimes stay."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _content_identity(str(path), stamp)


@lru_cache(maxsize=256)
def _content_identity(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    from codeparrot.hub import file_sha256

    base = Path(root)
    h = hashlib.sha256()
    for name, _size, _mtime in stamp:
        rel = Path(name).relative_to(base).as_posix() if base.is_dir() else base.name
        h.update(f"{rel}\0{file_sha256(Path(name))}\0".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- the local cache

MARKER_SUFFIX = ".artifact.json"


def marker_of(folder: Path) -> Path:
    return folder.with_name(folder.name + MARKER_SUFFIX)


def materialize(folder: Path, uri: str, fetch: Callable[[Path], dict[str, str] | None]) -> None:
    """Make `folder` a verified copy of `uri`: reuse it when its marker checks out, else fetch it atomically.

    `fetch(tmp)` fills an empty temp folder and may return the sha256 every file must have; the copy is
    renamed into place and its marker (each file's size, mtime and sha256) written only after that.
    """
    from codeparrot.hub import file_sha256

    with locked(folder.with_name(f".{folder.name}.lock")):
        problem = verify(folder)
        if problem is None:
            log.debug("%s: cached in %s", uri, folder)
            return
        if problem != "not cached":
            log.warning("%s: the cached copy in %s is damaged (%s); fetching it again", uri, folder, problem)
        marker_of(folder).unlink(missing_ok=True)
        _remove(folder)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        _remove(tmp)
        tmp.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            with writing(tmp, "CODEPARROT_HOME (the artifact cache)"):
                expected = fetch(tmp)
            files = {p.relative_to(tmp).as_posix(): p for p in sorted(tmp.rglob("*")) if p.is_file()}
            digests = {rel: file_sha256(p) for rel, p in files.items()}
            if expected is not None:
                missing = sorted(set(expected) - set(digests))
                bad = sorted(rel for rel, sha in expected.items() if rel in digests and digests[rel] != sha)
                if missing or bad:
                    raise DataError(f"{uri}: fetched files do not match the source's checksums (missing {missing[:5]}, differing {bad[:5]}); retry")
            for p in files.values():
                p.chmod(0o444)
            os.replace(tmp, folder)
        except BaseException:
            _remove(tmp)
            raise
        entries = {}
        for rel, sha in digests.items():
            st = (folder / rel).stat()
            entries[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        record = {"uri": uri, "files": entries, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_bytes(marker_of(folder), json.dumps(record, indent=1).encode())
        size = sum(e["size"] for e in entries.values())
        log.info("%s: fetched %d files (%.1f MiB) into %s in %.1f s", uri, len(entries), size / 2**20, folder, time.monotonic() - t0)


def verify(folder: Path) -> str | None:
    """None when `folder` is a complete cached copy; else what is wrong with it."""
    from codeparrot.hub import file_sha256

    try:
        record = json.loads(marker_of(folder).read_text())
        entries = record["files"]
    except (OSError, ValueError, KeyError):
        return "not cached"
    for rel, entry in entries.items():
        path = folder / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != entry["size"]:
            return f"{rel} has {st.st_size} bytes, not {entry['size']}"
        if st.st_mtime_ns != entry["mtime_ns"] and file_sha256(path) != entry["sha256"]:
            return f"{rel} changed since it was fetched"
    return None


def _remove(path: Path) -> None:
    """Delete a folder of read-only files (their folders stay writable, so unlinking works)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@click.command("fetch")
@click.argument("uri")
def fetch_command(uri: str) -> None:
    """Resolve URI (hf://, gs://, a path) to a local read-only copy; print its folder and exact reference."""
    from codeparrot.services import ensure_storage

    with ensure_storage(uri) as resolver:
        found = resolver.resolve(uri)
    click.echo(f"{found.path}\t{found.ref}")
