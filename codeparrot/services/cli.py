"""`codeparrot services up|down|status` and `codeparrot seed`."""

from __future__ import annotations

import json

import click

from codeparrot.services.emulators import EmbeddedServices, load_seed
from codeparrot.storage import locked


@click.group()
def services() -> None:
    """Start, stop or inspect the embedded BigQuery and GCS emulators."""


@services.command()
@click.option("--root", type=click.Path(), default=None, help="State folder (default $CODEPARROT_HOME/services).")
@click.option("--no-seed", is_flag=True, help="Do not build/load the github_repos seed.")
@click.option("--foreground", is_flag=True, help="Stay in the foreground until SIGTERM/Ctrl-C (containers).")
@click.option("--port-bigquery", type=int, default=None, help="BigQuery REST port (default: a free one).")
@click.option("--port-gcs", type=int, default=None, help="GCS port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 in a container).")
@click.option("--advertise", default=None, help="Host name clients use to reach the emulators (e.g. the compose service).")
def up(
    root: str | None, no_seed: bool, foreground: bool, port_bigquery: int | None, port_gcs: int | None, host: str, advertise: str | None
) -> None:
    """Start both emulators and load the seed; prints the environment to use them."""
    svc = EmbeddedServices(root, ports=(port_bigquery, port_gcs), host=host, advertise=advertise)
    with locked(svc.root / "start.lock"):  # a command starting them right now: wait, then reuse
        running = svc.running()
        endpoints = running or svc.start()
        svc.keep()  # `up` means: until `down`, even if a command started them
    if not no_seed:
        click.echo(f"# seed: {json.dumps(load_seed(endpoints))}", err=True)
    for key, value in endpoints.environ().items():
        click.echo(f"export {key}={value}")
    if foreground and running is None:
        import signal
        import threading

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        click.echo("# embedded services are up; stop with SIGTERM or Ctrl-C", err=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            svc.stop()
        return
    svc.detach()
    click.echo("# embedded services are up; later codeparrot commands find them on their own", err=True)


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
