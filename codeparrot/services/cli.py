"""`codeparrot services up|down|status` and `codeparrot seed`."""

from __future__ import annotations

import json

import click

from codeparrot.services.emulators import EmbeddedServices, load_seed


@click.group()
def services() -> None:
    """Start, stop or inspect the embedded BigQuery and GCS emulators."""


@services.command()
@click.option("--root", type=click.Path(), default=None, help="State folder (default $CODEPARROT_HOME/services).")
@click.option("--no-seed", is_flag=True, help="Do not build/load the github_repos seed.")
def up(root: str | None, no_seed: bool) -> None:
    """Start both emulators in the background and load the seed; prints the environment to use them."""
    svc = EmbeddedServices(root)
    running = svc.running()
    endpoints = running or svc.start()
    if not no_seed:
        click.echo(f"# seed: {json.dumps(load_seed(endpoints))}", err=True)
    svc.detach()
    click.echo("# embedded services are up; later codeparrot commands find them on their own. To point other tools at them:", err=True)
    for key, value in endpoints.environ().items():
        click.echo(f"export {key}={value}")


@services.command()
@click.option("--root", type=click.Path(), default=None)
def down(root: str | None) -> None:
    """Stop the emulators started by `up`."""
    stopped = EmbeddedServices(root).down()
    click.echo("stopped" if stopped else "nothing was running")


@services.command()
@click.option("--root", type=click.Path(), default=None)
def status(root: str | None) -> None:
    """Show each emulator's pid, URL and health; exit 1 if any is down."""
    rows = EmbeddedServices(root).status()
    if not rows:
        click.echo("not running (start with `codeparrot services up`)")
        raise SystemExit(1)
    for info, healthy in rows:
        click.echo(f"{info.name:9} pid {info.pid:<7} {info.url:28} {'healthy' if healthy else 'DOWN'}  log: {info.log_file}")
    if not all(h for _, h in rows):
        raise SystemExit(1)


@click.command()
@click.option("--max-mib", type=float, default=96.0, show_default=True, help="Cap on .py content; 0 for no cap.")
@click.option("--out", type=click.Path(), required=True, help="Folder for files/contents/licenses NDJSON.gz.")
def seed(max_mib: float, out: str) -> None:
    """Build the github_repos seed tables from the installed Python files (without loading them)."""
    from pathlib import Path

    from codeparrot.services.seed import SeedConfig, build_seed

    stats = build_seed(SeedConfig(max_mib=max_mib or None), Path(out))
    click.echo(json.dumps(stats, indent=2))
