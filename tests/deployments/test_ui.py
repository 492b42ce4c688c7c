"""A training run started and read in the Prefect UI, in headless Chromium, as a new user would.

A real `prefect server` serving its UI, `deployments/setup.py`, `prefect deploy --all` and a process worker on
gpu-pool; the Hub stand-in holds a published dataset and tokenizer. Chromium opens the train-spot custom-run
page, where the form must show the `data` default and the parameter descriptions; choosing the `tiny` preset
and submitting must give a run that completes (the preset brings its own context, warmup, learning rate,
steps and evaluation budget); the run's Artifacts tab must list the chart and the summary, and their pages
must render the chart as a picture and the summary's figures. Screenshots are kept in the test's temp folder
(`ui-*.png`). Needs Debian's `chromium` (`.ci/run` installs it) and the `playwright` package (dev extra).
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from codeparrot.hub import StandIn
from codeparrot.storage import open_store
from codeparrot.train.sample import train_sample_tokenizer
from flows.pretokenize import DEFAULT_DATASET
from tests.builders import tiny_dataset
from tests.deployments.helpers import PREFECT_YAML, REPO, Live, live_stack, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package drives Chromium (pip install -e '.[dev]')")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)", allow_module_level=True)

# As the environment notes for this machine: root needs --no-sandbox, and without the background-networking
# flags Chromium keeps dialling Google's hosts, which the closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 2400}  # the UI scrolls inside its own pane: a tall window shows it all


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("ui")
    hub, artifacts = root / "hub", root / "artifacts"
    # What a refresh and a tokenizer run would have published: the newest revisions the form defaults to.
    data = tiny_dataset(root / "seed-data", limit=150)
    standin = StandIn(open_store(str(hub)))
    standin.push(data, "dataset", "codeparrot/codeparrot-clean")
    standin.push(train_sample_tokenizer(data, root / "seed-tokenizer", vocab_size=512), "model", "codeparrot/codeparrot-tokenizer")
    env = {"CODEPARROT_HOME": str(root / "home"), "CODEPARROT_HUB_ROOT": str(hub), "CODEPARROT_ARTIFACT_ROOT": str(artifacts),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    with live_stack(root, ui=True, **env) as live:
        live.stack.run([sys.executable, "deployments/setup.py"])
        live.prefect("deploy", "--prefect-file", str(PREFECT_YAML.relative_to(REPO)), "--all")
        live.start_worker("gpu-worker")
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _deployment_id(live: Live, name: str) -> str:
    with live.client() as client:
        return str(next(d.id for d in client.read_deployments() if d.name == name))


def _runs_of(live: Live, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with live.client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[uuid.UUID(deployment)])))


def _choose(page: Any, current: str, option: str) -> None:
    """Pick `option` in the form's select now showing `current` (it opens from the keyboard, not a click)."""
    select = page.locator("button.p-select-button__control", has_text=current).first
    select.scroll_into_view_if_needed()
    select.focus()
    page.keyboard.press("ArrowDown")
    page.locator(".p-pop-over-content").get_by_text(option, exact=True).click()


def test_a_run_started_from_the_train_spot_form_completes_and_shows_its_chart_and_summary(live: Live, browser: Any) -> None:
    ui = live.url.removesuffix("/api")
    page = browser.new_page(viewport=VIEWPORT)
    deployment = _deployment_id(live, "train-spot")
    page.goto(f"{ui}/deployments/deployment/{deployment}/run", wait_until="networkidle")
    page.get_by_text("Preset (Optional)").wait_for()
    page.screenshot(path=str(live.root / "ui-1-train-spot-form.png"))

    # The form: the newest published dataset as the default, every parameter with its title and description.
    values = page.locator("textarea, input").evaluate_all("els => els.map(e => e.value)")
    assert DEFAULT_DATASET in values
    text = page.inner_text("body")
    for said in ("Dataset (Optional)", "without @REV the newest published revision", "Processes (GPUs)",
                 "Name of a Prefect Secret block holding a Hub token", "empty: the preset's (tiny 400, small 150000",
                 "Advanced: model overrides"):  # fmt: skip
        assert said in text, f"the form does not say {said!r}"
    assert 'Property is type "None"' not in text.split("Training (Optional)")[1].split("Token sets")[0]

    # A normal edit: another preset. Its own recipe follows, so the run is valid and short.
    _choose(page, "small", "tiny")
    page.screenshot(path=str(live.root / "ui-2-tiny-chosen.png"))
    validated, before = [], {r.id for r in _runs_of(live, deployment)}
    page.on("response", lambda r: validated.append(r.json()) if "schemas/validate" in r.url else None)
    page.get_by_role("button", name="Submit").click()
    # Accepted, the UI goes back to the deployment's page (its Runs tab); refused, it stays on the form.
    page.wait_for_url(lambda url: "/run" not in url.split("/deployment/", 1)[-1], timeout=60_000)
    assert validated and validated[-1]["valid"], validated
    [run_id] = wait_until(lambda: {r.id for r in _runs_of(live, deployment)} - before, timeout=30, what="the run the form created")

    run = live.wait_final(run_id, timeout=900)
    assert run.state.is_completed(), (run.state.message, live.stack.log("gpu-worker")[-4000:])
    assert run.parameters["config"]["preset"] == "tiny"
    result = _artifacts(live, run_id)
    summary = result["training-summary"]
    assert "| steps | 400 |" in summary.data and "HumanEval (8 problems x 4 samples)" in summary.data

    # The run page's Artifacts tab lists the chart once and the summary, each with its description.
    page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.locator("li.p-tab", has_text="Artifacts").click()
    page.get_by_text("training-summary").first.wait_for()
    page.screenshot(path=str(live.root / "ui-3-run-artifacts.png"))
    listed = page.inner_text("body")
    assert listed.count("training-chart") == 1 and "training-summary" in listed and "model-reference" in listed
    assert "Train and validation loss and the learning rate by step" in listed

    # The chart renders as a picture (an SVG the browser decoded), the summary as a table of figures.
    page.goto(f"{ui}/artifacts/artifact/{result['training-chart'].id}", wait_until="networkidle")
    image = page.locator("img[src^='data:image/svg+xml']")
    image.wait_for()
    wait_until(lambda: image.evaluate("e => e.complete && e.naturalWidth") > 0, timeout=30, what="the chart image to decode")
    page.screenshot(path=str(live.root / "ui-4-chart.png"))
    assert "step 400 of 400" in page.inner_text("body")
    page.goto(f"{ui}/artifacts/artifact/{summary.id}", wait_until="networkidle")
    page.get_by_text("final validation loss").wait_for()
    page.screenshot(path=str(live.root / "ui-5-summary.png"))
    body = page.inner_text("body")
    assert "codeparrot-small (110M), reference" in body and "hf://codeparrot/codeparrot-tiny@" in body
    page.close()


def test_the_readmes_cli_example_keeps_the_deployments_config_and_changes_one_field(live: Live) -> None:
    """README's merge example, as written, against the deployed train-spot (scheduled an hour out, then deleted)."""
    if shutil.which("jq") is None or shutil.which("curl") is None:
        pytest.skip("the README's example uses curl and jq (apt-get install curl jq)")
    block = (REPO / "README.md").read_text().split("<!-- cli-merge-example -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    deployment = _deployment_id(live, "train-spot")
    before = {r.id for r in _runs_of(live, deployment)}
    live.stack.run(["bash", "-euo", "pipefail", "-c", block.strip() + " --start-in '1 hour'"])
    [run_id] = {r.id for r in _runs_of(live, deployment)} - before
    with live.client() as client:
        config = client.read_flow_run(run_id).parameters["config"]
        client.delete_flow_run(run_id)
    assert config == {"preset": "small", "max_steps": 50000,
                      "preemption_url": "http://metadata.google.internal/computeMetadata/v1/instance/preempted"}  # fmt: skip


def test_train_smoke_checks_the_pool_end_to_end_in_a_short_run(live: Live) -> None:
    run = live.wait_final(live.run_deployment("training/train-smoke"), timeout=600)
    assert run.state.is_completed(), (run.state.message, live.stack.log("gpu-worker")[-4000:])
    summary = _artifacts(live, run.id)["training-summary"].data
    assert "| steps | 60 |" in summary and "HumanEval (4 problems x 2 samples)" in summary
    assert "hf://codeparrot/codeparrot-smoke@" in summary


def _artifacts(live: Live, run_id: uuid.UUID) -> dict[str, Any]:
    """The run's artifacts by key (the latest of each)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with live.client() as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key: dict[str, Any] = {}
    for art in sorted(arts, key=lambda a: a.created):
        by_key[art.key] = art
    assert {"training-chart", "training-summary", "training-progress", "model-reference"} <= set(by_key), json.dumps(sorted(by_key))
    assert all(a.description for a in arts), [a.key for a in arts if not a.description]
    return by_key
