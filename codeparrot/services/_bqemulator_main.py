"""Entry point of the embedded BigQuery emulator process (`python -m codeparrot.services._bqemulator_main`).

Two adaptations, both local to the embedded services, so the export code path stays the production one:

1. bqemulator loads DuckDB's spatial extension at start and, as shipped, downloads it (fails offline).
   The `duckdb-extension-spatial` wheel carries the binary; installing it from there first makes
   bqemulator's own `INSTALL spatial` a no-op.
2. bqemulator writes `EXPORT DATA` files under a local folder (`BQEMU_GCS_LOCAL_ROOT`) instead of Cloud
   Storage. When `CODEPARROT_EXPORT_TO_GCS` names a GCS endpoint, each exported file is uploaded to that
   GCS emulator (and removed locally) before the job reports DONE, which is when real BigQuery's objects
   exist too.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("codeparrot.services.bigquery")


def install_spatial_extension() -> None:
    import duckdb
    from duckdb_extensions import import_extension

    con = duckdb.connect(":memory:")
    try:
        import_extension("spatial", con=con)
    finally:
        con.close()


def bridge_exports_to_gcs(gcs_endpoint: str, local_root: Path) -> None:
    from bqemulator.jobs import executor
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="embedded", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_endpoint}
    )
    original = executor.write_export

    def write_export_to_gcs(arrow_table, options, ctx):  # type: ignore[no-untyped-def]
        outcome = original(arrow_table, options, ctx)
        for uri in outcome.uris:
            bucket, _, name = uri[len("gs://") :].partition("/")
            path = local_root / bucket / name
            blob = client.bucket(bucket).blob(name)
            blob.upload_from_filename(str(path), content_type="application/octet-stream")
            path.unlink()
        return outcome

    executor.write_export = write_export_to_gcs


def main() -> None:
    install_spatial_extension()
    gcs = os.environ.get("CODEPARROT_EXPORT_TO_GCS")
    root = os.environ.get("BQEMU_GCS_LOCAL_ROOT")
    if gcs and root:
        bridge_exports_to_gcs(gcs, Path(root))
    from bqemulator.cli import main as bqemulator_main

    sys.exit(bqemulator_main())


if __name__ == "__main__":
    main()
