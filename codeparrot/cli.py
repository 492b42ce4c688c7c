"""The `codeparrot` command. Each stage's commands live beside its logic and load only when called.

Errors meant for users (`CodeParrotError`, and other libraries' failures that `explain` recognises) print
as one clear message and an exit code (2, or 3 when a retry may help), not a traceback; anything else is
a bug and prints one line naming it, exit code 1. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from codeparrot.errors import CodeParrotError, explain, short

# command name -> "module:attribute"; imported on first use so `codeparrot --help` stays fast
# (torch and Prefect take seconds to import).
COMMANDS: dict[str, tuple[str, str]] = {
    "services": ("codeparrot.services.cli:services", "Start, stop or inspect the embedded BigQuery and GCS emulators."),
    "seed": ("codeparrot.services.cli:seed", "Build the github_repos seed from installed Python files and load it."),
    "export": ("codeparrot.export:export_command", "Run the BigQuery query and export gzipped JSONL shards to GCS."),
    "download": ("codeparrot.download:download_command", "Download export shards from GCS into the local cache."),
    "curate": ("codeparrot.curate.cli:curate", "License filter, heuristics, exact and near dedup of shards."),
    "dedup": ("codeparrot.curate.cli:dedup", "MinHash LSH near-dedup of shards alone."),
    "publish": ("codeparrot.publish:publish_command", "Split, write Parquet and a dataset card, push to the Hub target."),
    "refresh": ("flows.dataset_refresh:refresh_command", "Run the dataset-refresh flow: export to publish."),
    "tokenizer": ("codeparrot.tokenizer:tokenizer_command", "Train and evaluate a byte-level BPE tokenizer."),
    "train": ("codeparrot.train.cli:train", "Train a GPT-2 with accelerate; rerunning resumes."),
    "perplexity": ("codeparrot.evaluate.cli:perplexity", "Validation loss and perplexity of a model."),
    "humaneval": ("codeparrot.evaluate.cli:humaneval", "HumanEval pass@k with sandboxed execution."),
    "generate": ("codeparrot.evaluate.cli:generate", "Sample completions of a prompt."),
    "pretokenize": ("flows.pretokenize:pretokenize_command", "Token shards of a dataset revision with a tokenizer revision."),
    "fetch": ("codeparrot.artifacts:fetch_command", "A local read-only copy of an hf://, gs:// or local artifact."),
    "run": ("flows.end_to_end:run_command", "The whole DAG on the embedded defaults, in one command."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """CodeParrot Flows: BigQuery export to a trained, evaluated GPT-2 for Python."""
    # Our own progress at INFO by default; -v adds our debug output, -vv everyone's.
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("codeparrot").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = {"debug": debug}


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become a message and an exit code (see `codeparrot.errors`)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, standalone_mode=False)
    except CodeParrotError as exc:
        if debug:
            raise
        return _fail(exc)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        if debug:
            raise
        known = explain(exc)
        if known is not None:
            return _fail(known)
        click.secho(f"error: unexpected {type(exc).__name__}: {short(exc)} (rerun with --debug for the traceback)", fg="red", err=True)
        return 1
    return 0


def _fail(exc: CodeParrotError) -> int:
    click.secho(f"error: {exc}", fg="red", err=True)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
