"""`codeparrot curate` and `codeparrot dedup`: the local drivers, with the stats table printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from codeparrot.errors import ConfigError

_WORKERS_HELP = "CPUs for the per-shard work (default: all); also the threads writing the output."


def _scale_options(fn: Any) -> Any:
    """--partitions and --memory-mb: how the dedup and output stages split the corpus (never what they output)."""
    fn = click.option("--memory-mb", type=click.IntRange(min=64), default=2048, show_default=True,
                      help="Memory budget of one process: P is chosen so a partition fits in half of it.")(fn)  # fmt: skip
    return click.option("--partitions", type=click.IntRange(1, 4096), default=None,
                        help="Hash-range partitions P of the dedup stages (default: from the corpus size and "
                             "--memory-mb); the output is the same for any P.")(fn)  # fmt: skip


def _config_error(exc: ValidationError) -> ConfigError:
    lines = [f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
    return ConfigError("invalid settings: " + "; ".join(lines))


def _report(result: object, out_dir: Path) -> None:
    click.echo(result.text_table())  # type: ignore[attr-defined]
    click.echo(f"kept shards, stats.json and duplicate_clusters.jsonl in {out_dir}")


@click.command("curate")
@click.argument("in_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--licenses", default="permissive", show_default=True,
              help="Tier (permissive, weak-copyleft, all), comma-separated license keys, or 'any' (no filter).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the probabilistic drops.")
@click.option("--no-near-dedup", is_flag=True, help="Skip MinHash near-dedup (exact dedup still runs).")
@click.option("--threshold", type=float, default=0.85, show_default=True, help="Near-dedup Jaccard threshold.")
@click.option("--shingling", type=click.Choice(["tokens", "5gram"]), default="tokens", show_default=True,
              help="Near-dedup sets: tokens (CodeParrot) or 5-grams of tokens (bigcode).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Tokenizer folder: enables the char/token ratio filter.")
@click.option("--write-dropped", is_flag=True, help="Write dropped records to OUT_DIR/dropped/<reason>/.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable line instead of counting it.")
@click.option("--workers", type=int, default=None, help=_WORKERS_HELP)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Intermediate files (default: OUT_DIR/_work, removed when done or failed; a given folder is kept for reruns).")
@click.option("--no-redaction", is_flag=True, help="Keep secrets and personal data (no placeholders).")
@click.option("--no-decontamination", is_flag=True, help="Keep files that contain benchmark problems.")
@click.option("--benchmark-file", "benchmark_files", multiple=True, metavar="NAME=PATH",
              help="Also remove files containing the texts of this JSONL benchmark (repeatable).")
@_scale_options
def curate(
    in_dir: Path,
    out_dir: Path,
    licenses: str,
    seed: int,
    no_near_dedup: bool,
    threshold: float,
    shingling: str,
    tokenizer_dir: Path | None,
    write_dropped: bool,
    strict: bool,
    workers: int | None,
    work_dir: Path | None,
    no_redaction: bool,
    no_decontamination: bool,
    benchmark_files: tuple[str, ...],
    partitions: int | None,
    memory_mb: int,
) -> None:
    """License filter, secret/PII redaction, CodeParrot heuristics, benchmark decontamination, exact and
    near dedup of the shards in IN_DIR into OUT_DIR."""
    from codeparrot.curate.config import CurateConfig, DedupConfig
    from codeparrot.curate.decontaminate import DecontaminationConfig
    from codeparrot.curate.pii import RedactionConfig
    from codeparrot.curate.pipeline import curate as run

    files = []
    for spec in benchmark_files:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--benchmark-file {spec!r}: use NAME=PATH, e.g. --benchmark-file mbpp=mbpp.jsonl")
        files.append({"name": name, "path": path})

    try:
        cfg = CurateConfig(
            licenses=licenses,
            seed=seed,
            near_dedup=not no_near_dedup,
            dedup=DedupConfig(threshold=threshold, shingling=shingling),
            tokenizer_dir=tokenizer_dir,
            write_dropped=write_dropped,
            strict=strict,
            redaction=RedactionConfig(**dict.fromkeys(RedactionConfig.model_fields, False)) if no_redaction else RedactionConfig(),
            decontamination=DecontaminationConfig(enabled=not no_decontamination, benchmark_files=tuple(files)),
        )
    except ValidationError as exc:
        raise _config_error(exc) from None
    result = run(in_dir, out_dir, cfg, workers=workers, work_dir=work_dir, progress=True, partitions=partitions, memory_mb=memory_mb)
    _report(result, out_dir)


@click.command("dedup")
@click.argument("in_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--threshold", type=float, default=0.85, show_default=True, help="Jaccard threshold of near-duplicates.")
@click.option("--shingling", type=click.Choice(["tokens", "5gram"]), default="tokens", show_default=True,
              help="Sets compared: tokens (CodeParrot) or 5-grams of tokens (bigcode).")
@click.option("--keep", type=click.Choice(["most-copies", "min-key"]), default="most-copies", show_default=True,
              help="Survivor of a cluster: most copies then smallest (repo_name, path), or smallest key.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable line instead of counting it.")
@click.option("--workers", type=int, default=None, help=_WORKERS_HELP)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Intermediate files (default: OUT_DIR/_work, removed when done or failed; a given folder is kept for reruns).")
@_scale_options
def dedup(
    in_dir: Path,
    out_dir: Path,
    threshold: float,
    shingling: str,
    keep: str,
    strict: bool,
    workers: int | None,
    work_dir: Path | None,
    partitions: int | None,
    memory_mb: int,
) -> None:
    """MinHash LSH near-dedup alone (no license filter or heuristics) of the shards in IN_DIR into OUT_DIR."""
    from codeparrot.curate.config import DedupConfig
    from codeparrot.curate.pipeline import dedup as run

    try:
        cfg = DedupConfig(threshold=threshold, shingling=shingling, keep=keep)
    except ValidationError as exc:
        raise _config_error(exc) from None
    result = run(in_dir, out_dir, cfg, workers=workers, strict=strict, work_dir=work_dir, progress=True,
                 partitions=partitions, memory_mb=memory_mb)  # fmt: skip
    _report(result, out_dir)
