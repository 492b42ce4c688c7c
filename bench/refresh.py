"""Dataset refresh: first run vs an unchanged rerun (every task a cache hit), as wall times and a ratio.

Both runs happen in this process against one Prefect API and one pair of embedded emulators (as on a
long-running worker, where neither is restarted between scheduled runs), in a fresh CODEPARROT_HOME, so
the first run does all the work and the second only what a cache hit costs. Goal: ratio < 0.10.
Flow-run heartbeats are off as in `codeparrot refresh` (flows/_local.py); `--heartbeats` keeps Prefect's
default, whose thread adds up to a second at the end of every flow run.

    python bench/refresh.py [--home DIR] [--seed-mib 96]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=None, help="CODEPARROT_HOME to use (default: a fresh temp dir)")
    ap.add_argument("--heartbeats", action="store_true", help="keep Prefect's flow-run heartbeats on")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="refresh-bench-"))
    os.environ["CODEPARROT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    from codeparrot.services.emulators import EmbeddedServices, load_seed, patched_environ
    from flows.dataset_refresh import dataset_refresh

    def states(flow_run_id) -> dict[str, int]:
        counts: dict[str, int] = {}
        with get_client(sync_client=True) as client:
            pending = [flow_run_id]
            while pending:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending)))
                kids = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[r.id for r in runs])))
                parents = {k.parent_task_run_id for k in kids}
                for r in runs:
                    if r.id not in parents:
                        counts[r.state.name] = counts.get(r.state.name, 0) + 1
                pending = [k.id for k in kids]
        return counts

    from contextlib import nullcontext

    from flows._local import local_run

    with (
        EmbeddedServices(home / "services") as endpoints,
        patched_environ(endpoints.environ()),
        nullcontext() if args.heartbeats else local_run(),
    ):
        t = time.perf_counter()
        seed = load_seed(endpoints)
        seed_s = time.perf_counter() - t
        with get_client(sync_client=True) as client:  # start the local Prefect API before timing
            client.hello()
        runs = []
        for label in ("first", "second"):
            t = time.perf_counter()
            state = dataset_refresh(return_state=True)
            runs.append((label, time.perf_counter() - t, state))
    (_, first_s, first), (_, second_s, second) = runs
    print(json.dumps({
        "seed_build_and_load_s": round(seed_s, 2), "seed": {k: v for k, v in seed.items() if k != "loaded"},
        "first_s": round(first_s, 2), "second_s": round(second_s, 2), "ratio": round(second_s / first_s, 3),
        "first_task_states": states(first.state_details.flow_run_id),
        "second_task_states": states(second.state_details.flow_run_id),
        "heartbeats": args.heartbeats, "rows": first.result().rows, "kept": first.result().kept, "revision": first.result().revision,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
