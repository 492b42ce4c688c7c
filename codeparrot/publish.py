"""Publish stage: train/valid split, Parquet shards in the Hub layout, a dataset card, and a push.

- Split by a seeded hash of `repo_name`, so every repository sits on one side and near-copies inside a
  repository cannot leak from train into validation. Deterministic whatever the input order.
- Layout: `data/{split}-00000-of-000NN.parquet` plus `README.md` whose YAML declares the configs and
  splits, so `datasets.load_dataset(folder)` reads both splits as they are named here.
- Target: the Hub the configuration names (`codeparrot.hub`): the Hugging Face Hub (one commit for the
  whole folder, skipped when the head already holds the same content hash) or the embedded stand-in
  (immutable revisions named by content hash, the head moved by compare-and-swap), either way under
  `dataset_name`.

The result is the dataset's `hf://datasets/OWNER/NAME@REV` URI: downstream stages take it and key their
caches on the revision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, Field, field_validator

from codeparrot.config import StageConfig
from codeparrot.env import home
from codeparrot.errors import ConfigError, DataError
from codeparrot.hub import Hub, PushResult, folder_hash, staging_folder
from codeparrot.shards import BadRecord, Record, iter_records, list_shards

log = logging.getLogger(__name__)

PUBLISH_VERSION = "1"
SPLITS = ("train", "valid")
COLUMNS = ("repo_name", "path", "copies", "size", "content", "license")
SCHEMA = pa.schema(
    [
        ("repo_name", pa.string()),
        ("path", pa.string()),
        ("copies", pa.int64()),
        ("size", pa.int64()),
        ("content", pa.large_string()),
        ("license", pa.string()),
    ]
)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishConfig(StageConfig):
    """How the curated data is split, written and pushed."""

    valid_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="Share of repositories in validation (by a hash of repo_name)."
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Salt of the split hash: another seed, another split.")
    max_shard_mib: float = Field(256.0, gt=0, description="Parquet shard size before a new shard starts.")
    row_group_rows: int = Field(1000, ge=1, description="Rows per Parquet row group (the unit readers stream).")
    dataset_name: str = Field(
        "codeparrot/codeparrot-clean", description="owner/name of the dataset repo (on the Hub, or in its stand-in)."
    )
    private: bool = Field(True, description="Create the Hub repo private (the stand-in has no visibility).")

    volatile_fields: ClassVar[frozenset[str]] = frozenset({"private"})

    @field_validator("dataset_name")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _REPO_RE.match(v):
            raise ValueError(f"repo {v!r} must look like 'owner/name' (letters, digits, '-', '_', '.')")
        return v


class SplitStats(BaseModel):
    files: int = 0
    bytes: int = 0
    repos: int = 0
    shards: int = 0


class PublishResult(PushResult):
    """Where the dataset was published: its `hf://datasets/...@REV` URI (what downstream stages take)."""

    splits: dict[str, SplitStats]
    card: str = ""

    def identity(self) -> str:
        return self.revision


def repo_hash(repo_name: str, seed: int) -> float:
    """A repository's seeded position in [0, 1): the split draws by it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{repo_name}".encode()).digest()[:8], "big") / 2**64


def split_of(repo_name: str, cfg: PublishConfig, forced_valid: str | None = None) -> str:
    """'valid' for a seeded-hash share of repositories (plus `forced_valid`), else 'train'."""
    return "valid" if repo_name == forced_valid or repo_hash(repo_name, cfg.seed) < cfg.valid_fraction else "train"


class _SplitWriter:
    """Parquet shards of one split, written under temporary names until the total count is known."""

    def __init__(self, folder: Path, split: str, cfg: PublishConfig) -> None:
        self.folder, self.split, self.cfg = folder, split, cfg
        self.parts: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows: list[Record] = []
        self.shard_bytes = 0
        self.stats = SplitStats()
        self.repos: set[str] = set()
        self.licenses: Counter[str] = Counter()

    def add(self, rec: Record) -> None:
        self.rows.append(rec)
        size = len(rec["content"])
        self.stats.files += 1
        self.stats.bytes += int(rec.get("size") or size)
        self.repos.add(rec["repo_name"])
        self.licenses[str(rec.get("license"))] += 1
        self.shard_bytes += size
        if len(self.rows) >= self.cfg.row_group_rows:
            self._flush()
        if self.shard_bytes >= self.cfg.max_shard_mib * 2**20:
            self._close()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            part = self.folder / f".{self.split}-{len(self.parts):05d}.parquet.part"
            self.parts.append(part)
            self.writer = pq.ParquetWriter(part, SCHEMA, compression="zstd")
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in self.rows], schema=SCHEMA)
        self.writer.write_table(table, row_group_size=self.cfg.row_group_rows)
        self.rows = []

    def _close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.shard_bytes = 0

    def finish(self) -> list[Path]:
        self._close()
        if not self.parts:  # an empty split still gets one (empty) shard so loaders find it
            self.parts.append(self.folder / f".{self.split}-00000.parquet.part")
            pq.write_table(SCHEMA.empty_table(), self.parts[0], compression="zstd")
        n = len(self.parts)
        final = []
        for i, part in enumerate(self.parts):
            target = self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet"
            os.replace(part, target)
            final.append(target)
        self.stats.shards = n
        self.stats.repos = len(self.repos)
        return final


def _records(in_dir: Path, strict: bool) -> Iterator[Record]:
    stats_file = in_dir / "stats.json"
    if stats_file.exists() and not list(in_dir.glob("*.json.gz")):
        stats = json.loads(stats_file.read_text())
        raise DataError(
            f"curation kept {stats.get('kept', 0)} of {stats.get('records_in', '?')} records in {in_dir} "
            f"(dropped: {stats.get('dropped')}): nothing to publish; loosen the filters or license list"
        )
    for item in iter_records(list_shards(in_dir), strict=strict):
        if isinstance(item, BadRecord):
            raise DataError(f"curated data should be clean but {item.describe()}: re-run curate")
        yield item


def _write_splits(records: Iterable[Record], data: Path, cfg: PublishConfig, forced_valid: str | None) -> dict[str, _SplitWriter]:
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    writers = {s: _SplitWriter(data, s, cfg) for s in SPLITS}
    for rec in records:
        writers[split_of(rec["repo_name"], cfg, forced_valid)].add(rec)
    for w in writers.values():
        w.finish()
    return writers


def build_dataset(
    records: Iterable[Record] | Callable[[], Iterable[Record]],
    out: Path,
    cfg: PublishConfig,
    provenance: dict[str, Any] | None = None,
) -> dict[str, SplitStats]:
    """Write `out/data/*.parquet` and `out/README.md` from records; returns per-split stats.

    When the hash split leaves validation empty (a handful of repositories), the repository with the
    smallest hash goes to validation instead; that needs a second pass, so pass a callable that
    re-reads the records (a plain iterable is read once and then fails with a clear error).
    """
    data = out / "data"
    source = records if callable(records) else (lambda: records)
    writers = _write_splits(source(), data, cfg, None)
    train_repos = writers["train"].repos
    if writers["valid"].stats.files == 0 and len(train_repos) >= 2 and callable(records):
        forced = min(train_repos, key=lambda r: (repo_hash(r, cfg.seed), r))
        log.info("no repository drew validation at valid_fraction %.3f: %s goes there", cfg.valid_fraction, forced)
        writers = _write_splits(records(), data, cfg, forced)
    stats = {s: w.stats for s, w in writers.items()}
    licenses = Counter[str]()
    for w in writers.values():
        licenses.update(w.licenses)
    for split, other in (("valid", "train"), ("train", "valid")):
        if stats[split].files == 0:
            raise DataError(
                f"the {split} split is empty ({stats[other].repos} repositories, all in {other}): "
                f"publish more repositories (valid_fraction {cfg.valid_fraction}, seed {cfg.seed})"
            )
    (out / "README.md").write_text(dataset_card(cfg, stats, licenses, provenance or {}))
    return stats


def dataset_card(cfg: PublishConfig, stats: dict[str, SplitStats], licenses: Counter[str], prov: dict[str, Any]) -> str:
    """The dataset card: YAML metadata for loaders and the Hub, then provenance a reader can audit."""
    lic = sorted(k for k in licenses if k and k != "None")
    yaml_lines = [
        "---",
        "license: other",
        "license_name: mixed-permissive" if lic else "license_name: unknown",
        "license_details: " + json.dumps(", ".join(lic)),
        "language:",
        "- code",
        "tags:",
        "- code",
        "- python",
        "- codeparrot",
        "pretty_name: " + json.dumps(cfg.dataset_name),
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for s in SPLITS:
        yaml_lines += [f"  - split: {s}", f"    path: data/{s}-*"]
    yaml_lines += ["dataset_info:", "  features:"]
    for field in SCHEMA:
        dtype = "int64" if pa.types.is_integer(field.type) else "string"
        yaml_lines += [f"  - name: {field.name}", f"    dtype: {dtype}"]
    yaml_lines += ["  splits:"]
    for s in SPLITS:
        yaml_lines += [f"  - name: {s}", f"    num_bytes: {stats[s].bytes}", f"    num_examples: {stats[s].files}"]
    # Machine-readable lineage for the stages downstream (the model card repeats it).
    lineage = {"snapshot_id": prov.get("snapshot_id"), "export_uri": prov.get("export_uri"), "licenses": lic}
    if prov.get("decontamination"):  # evaluation reads it back: which benchmark problems the training data held
        lineage["decontamination"] = prov["decontamination"]
    yaml_lines += yaml.safe_dump({"codeparrot": lineage}, sort_keys=True).splitlines()
    yaml_lines.append("---")

    rows = "\n".join(f"| {s} | {stats[s].files} | {stats[s].bytes / 2**20:.1f} | {stats[s].repos} | {stats[s].shards} |" for s in SPLITS)
    lic_rows = "\n".join(f"| {k} | {licenses[k]} |" for k in lic)
    body = [
        f"# {cfg.dataset_name}",
        "",
        "Python files from GitHub (`bigquery-public-data.github_repos`), filtered and deduplicated with the "
        "CodeParrot recipe by CodeParrot Flows. Each row is one file: `repo_name`, `path`, `copies`, `size`, "
        "`content`, `license`.",
        "",
        "## Splits",
        "",
        f"Repositories are assigned whole to one split by a hash of `repo_name` (seed {cfg.seed}, "
        f"validation share {cfg.valid_fraction}), so files of one repository never straddle train and validation.",
        "",
        "| split | files | MiB | repositories | shards |",
        "|---|---|---|---|---|",
        rows,
        "",
        "## Licenses",
        "",
        "| license | files |",
        "|---|---|",
        lic_rows,
        "",
        "## Provenance",
        "",
    ]
    if prov.get("snapshot_id"):
        body.append(f"- Source snapshot: `{prov['snapshot_id']}`")
    if prov.get("export_uri"):
        body.append(f"- Export: `{prov['export_uri']}` ({prov.get('export_rows', '?')} rows)")
    if prov.get("sql"):
        body += ["", "Query:", "", "```sql", prov["sql"], "```"]
    counts = prov.get("counts")
    if counts:
        body += ["", "Row counts at each stage:", "", "| stage | records in | kept | dropped |", "|---|---|---|---|"]
        body += [f"| {c['stage']} | {c['in']} | {c['kept']} | {c['dropped']} |" for c in counts]
    dropped = prov.get("dropped")
    if dropped:
        body += ["", "Dropped records by reason:", "", "| reason | records |", "|---|---|"]
        body += [f"| {k} | {v} |" for k, v in sorted(dropped.items())]
    redaction = prov.get("redaction")
    if redaction:
        kinds = [k for k, on in redaction.get("kinds", {}).items() if on]
        placed = ", ".join(f"{k} {n}" for k, n in redaction.get("placeholders", {}).items()) or "none"
        body += ["", f"Secrets and personal data redacted ({', '.join(kinds) or 'off'}): {redaction.get('files', 0)} "
                 f"files touched; placeholders put in: {placed}. Placeholders: `<EMAIL>`, `<IP_ADDRESS>`, `<KEY>`, "
                 "`<PASSWORD>`."]  # fmt: skip
    decont = prov.get("decontamination")
    if decont:
        checked = ", ".join(f"{b} ({n} problems)" for b, n in decont.get("benchmarks", {}).items()) or "none"
        found = decont.get("problems_found", [])
        body += ["", f"Benchmark decontamination against {checked}: {decont.get('files_removed', 0)} files removed, "
                 f"{len(found)} problems found{': ' + ', '.join(found) if found else ''}."]  # fmt: skip
    if prov.get("curation"):
        body += ["", "Curation and dedup parameters:", "", "```json", json.dumps(prov["curation"], indent=2, sort_keys=True), "```"]
    return "\n".join(yaml_lines) + "\n\n" + "\n".join(body) + "\n"


def curation_report(in_dir: str | os.PathLike[str], *, with_dropped: bool = False) -> dict[str, Any]:
    """What the card states from a curation's stats.json: redaction and decontamination (and drop reasons)."""
    stats_file = Path(in_dir) / "stats.json"
    if not stats_file.exists():
        return {}
    stats = json.loads(stats_file.read_text())
    keys = ("redaction", "decontamination", *(("dropped",) if with_dropped else ()))
    return {k: stats[k] for k in keys if k in stats}


def publish(
    in_dir: str | os.PathLike[str],
    cfg: PublishConfig,
    *,
    hub: Hub,
    provenance: dict[str, Any] | None = None,
    staging: str | os.PathLike[str] | None = None,
) -> PublishResult:
    """Split and write the curated shards of `in_dir` in a temp folder, then push it to `hub`."""
    in_path = Path(in_dir)
    if provenance is None:
        provenance = curation_report(in_path, with_dropped=True)
    with staging_folder(Path(staging) if staging is not None else home() / "staging", "publish-") as tmp:
        build = tmp / "dataset"
        stats = build_dataset(lambda: _records(in_path, strict=False), build, cfg, provenance)
        card = (build / "README.md").read_text(encoding="utf-8")
        pushed = hub.push(
            build, "dataset", cfg.dataset_name, private=cfg.private, content_hash=folder_hash(build),
            delete_patterns=["data/*.parquet"],
        )  # fmt: skip
    result = PublishResult(**pushed.model_dump(), splits=stats, card=card)
    log.info(
        "published %s (%s): train %d files, valid %d files%s",
        result.uri, result.target, stats["train"].files, stats["valid"].files,
        " (unchanged, skipped)" if result.skipped else "",
    )  # fmt: skip
    return result


def dataset_lineage(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The `codeparrot` block of a published dataset card's YAML: snapshot, export, licenses (empty if none)."""
    card = Path(folder) / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return {}
    block = meta.get("codeparrot")
    return dict(block) if isinstance(block, dict) else {}


@click.command("publish")
@click.argument("in_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset-name", default=None, help="owner/name of the dataset repo (default codeparrot/codeparrot-clean).")
@click.option("--valid-fraction", type=float, default=None, help="Share of repositories in validation.")
@click.option("--seed", type=int, default=None, help="Salt of the split hash.")
def publish_command(in_dir: Path, **options: Any) -> None:
    """Split IN_DIR (curated shards) into train/valid Parquet with a dataset card and publish it."""
    try:
        cfg = PublishConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    from codeparrot.services import ensure_storage

    with ensure_storage(hub=True) as resolver:
        result = publish(in_dir, cfg, hub=resolver.hub)
    click.echo(f"{'unchanged' if result.skipped else 'published'} {result.uri} ({result.url})")
    for s, st in result.splits.items():
        click.echo(f"  {s:5}: {st.files} files, {st.bytes / 2**20:.1f} MiB, {st.repos} repositories, {st.shards} shards")
