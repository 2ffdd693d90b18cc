"""The operator console (``/ui``, docs/console.md) in a real browser: headless Chromium (the system's,
driven by Playwright) against a ``stateport serve`` process and a ``stateport worker`` process, on SQLite
and on PostgreSQL.

An operator signs in with a token, sees a DAG, triggers a run with a conf, watches it go queued -> running
-> success live (the run's wait stream), opens its task instances and result, edits a state value and sees
a stale edit refused, and cancels a run; a token without a scope sees the action disabled and the server
refuses it anyway. With ``STATEPORT_TEST_CONSOLE_SCREENSHOTS=1`` the SQLite run writes the screenshots of
docs/console.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import msgspec
import pytest

from stateport.bootstrap import open_services
from stateport.config import load_settings
from stateport.domain.models import DagSpec, TaskSpec
from tests.e2e.console_browser import DAG_MODULE, SCREENSHOTS, SHOTS_DIR, chromium_path, worker_process
from tests.fixtures.broken_dags import break_spec, mend_spec
from tests.fixtures.rest import SECRET, Server, run_logged_server, run_server
from tests.fixtures.sql import run_apart
from tests.services import ON_CI, free_port, require

pytestmark = [pytest.mark.slow]

try:
    from playwright import sync_api as playwright
except ImportError:  # the dev extra has it; without it the tests skip, or fail on CI
    if ON_CI:
        raise
    pytest.skip("playwright (the dev extra) is not installed", allow_module_level=True)
expect = playwright.expect
# Generous: two cores shared by many processes. The tests wait for what the page shows, never for a time.
SEEN_S = 60.0
expect.set_options(timeout=SEEN_S * 1000)
# The servers' inline result limit: a larger result is stored as a blob, shown by reference.
INLINE = "4096"
# After this many seconds unclaimed, a read of a run says so ("queued: no worker serving DAG 'd' claimed
# queue 'q' for N s").
UNCLAIMED = "1"


class Console:
    """One backend's server, the DAG module the worker imports, and its DAGs (registered)."""

    def __init__(self, server: Server, directory: Path, suffix: str, backend: str, database_url: str) -> None:
        self.server = server
        self.database_url = database_url
        self.directory = directory
        self.suffix = suffix
        self.backend = backend
        self.dag_id = f"console{suffix}"
        self.parked_id = f"parked{suffix}"
        self.wide_id = f"wide{suffix}_" + "d" * 200
        self.queue = f"console{suffix}"

    def url(self, path: str) -> str:
        return self.server.base_url + path

    def api(self, *scopes: str) -> httpx.Client:
        token = self.server.api_token(*scopes)
        return httpx.Client(base_url=self.server.base_url, headers={"Authorization": f"Bearer {token}"})


def _load_dags(directory: Path, suffix: str) -> ModuleType:
    """The worker's DAG module, imported here too, to register its specs as the worker would."""
    path = directory / "console_dag.py"
    path.write_text(DAG_MODULE)
    spec = importlib.util.spec_from_file_location(f"console_dag{suffix}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get("CONSOLE_SUFFIX")
    os.environ["CONSOLE_SUFFIX"] = suffix
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop("CONSOLE_SUFFIX", None)
        else:
            os.environ["CONSOLE_SUFFIX"] = saved
    return module


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    suffix = f"_{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(f"console-{request.param}")
    module = _load_dags(directory, suffix)
    data = directory / "data"
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
        serving = run_server(
            data, database_url=database_url, result_inline_bytes=INLINE, unclaimed_after_s=UNCLAIMED
        )
    else:
        database_url = load_settings({}, data_dir=str(data)).resolved_database_url
        serving = run_server(data, result_inline_bytes=INLINE, unclaimed_after_s=UNCLAIMED)
    with serving as server:
        console = Console(server, directory, suffix, request.param, database_url)
        with console.api("dags:write") as api:
            for dag in (module.dag, module.parked, module.wide):
                spec = msgspec.json.decode(msgspec.json.encode(dag.spec()))
                api.put(f"/api/v2/dags/{dag.dag_id}", json=spec).raise_for_status()
        yield console


@pytest.fixture(scope="module")
def browser(console: Console) -> Iterator[Any]:
    """A browser per backend, started after its server: Playwright's sync API runs an event loop in this
    thread while the browser is open, and the PostgreSQL fixture needs the thread's own (asyncio.run)."""
    executable = chromium_path()
    require(executable is not None, "Chromium (the system's `chromium` package; STATEPORT_TEST_CHROMIUM)")
    with playwright.sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: dialog.accept())
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"


# Every form field labelled, every link and button named: what a screen reader or voice control needs.
UNNAMED = """() => {
    const found = [];
    for (const e of document.querySelectorAll("input, select, textarea")) {
        const named = e.getAttribute("aria-label") || e.getAttribute("aria-labelledby");
        if (!(e.labels && e.labels.length) && !named) found.push(e.outerHTML.slice(0, 80));
    }
    for (const e of document.querySelectorAll("a[href], button")) {
        if (!(e.textContent.trim() || e.getAttribute("aria-label"))) found.push(e.outerHTML.slice(0, 80));
    }
    return found;
}"""


def _shot(console: Console, page: Any, name: str) -> None:
    """A page as the operator sees it: every control labelled; and a screenshot for docs/console.md, when
    asked for (from one backend: the pages are the same)."""
    assert page.evaluate(UNNAMED) == [], f"unlabelled controls on {name}"
    if SCREENSHOTS and console.backend == "sqlite":
        SHOTS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS_DIR / f"{name}.png"), full_page=True)


def _sign_in(console: Console, page: Any, token: str, *, shot: bool = False) -> None:
    _sign_in_at(
        page, console.url("/ui/dags"), token, shot=(lambda: _shot(console, page, "login")) if shot else None
    )


def _sign_in_at(page: Any, url: str, token: str, *, shot: Callable[[], None] | None = None) -> None:
    """Open ``url``, a console page: without a token every page sends the operator to sign in, and back
    afterwards."""
    page.goto(url)
    page.wait_for_url("**/ui/login?**")
    if shot is not None:
        shot()
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**" + url[url.index("/ui/") :])


def _run_url(console: Console, dag_id: str, run_id: str) -> str:
    return console.url(f"/ui/run?dag_id={quote(dag_id, safe='')}&run_id={quote(run_id, safe='')}")


def test_an_operator_runs_a_dag_and_edits_its_state(console: Console, page: Any) -> None:
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write", "state:admin"), shot=True)

    # The DAG list: the DAG with its queue, result task and teardown.
    row = page.locator(f"tr[data-dag-id='{console.dag_id}']")
    expect(row).to_contain_text(console.queue)
    expect(row).to_contain_text("answer")
    expect(row).to_contain_text("tidy")
    expect(row).to_contain_text(f"greetings{console.suffix}")
    expect(row.locator(".counts")).to_contain_text("success")
    # The footer's API link is the document this server serves, not /schema's viewers (they need a CDN).
    api_link = page.get_by_role("link", name="API document (OpenAPI JSON)")
    expect(api_link).to_have_attribute("href", "/schema/openapi.json")

    # The DAG page: its graph drawn, one box per task.
    row.get_by_role("link", name=console.dag_id).click()
    expect(page.locator("#dag-graph svg g.node")).to_have_count(3)
    expect(page.locator("#dag-graph g.result")).to_have_attribute("data-task-id", "answer")
    expect(page.locator("#dag-graph g.teardown")).to_have_attribute("data-task-id", "tidy")

    # The conf is checked before it is sent: an invalid one disables the trigger and says why.
    conf = page.get_by_label("conf (a JSON object)")
    conf.fill('{"name": "Ada"')
    expect(page.locator("#conf-status")).to_contain_text("Not valid JSON")
    expect(page.locator("#trigger-button")).to_be_disabled()
    conf.fill("[1, 2]")
    expect(page.locator("#conf-status")).to_contain_text("must be a JSON object")
    conf.fill(json.dumps({"name": "Ada", "hold": 2}))
    expect(page.locator("#trigger-button")).to_be_enabled()
    # A run id the API refuses: the rule in words, then the server's own answer.
    page.get_by_label("Run id (optional)").fill("a/b")
    page.locator("#trigger-button").click()
    expect(page.locator("#trigger-error")).to_contain_text("cannot contain '/'")
    expect(page.locator("#trigger-error")).to_contain_text(
        "The server answered: 422: String should match pattern"
    )
    expect(page.locator("#trigger-error")).to_contain_text("a run id has no '/' and no control characters")
    expect(page.get_by_label("Run id (optional)")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Run id (optional)").fill("")
    page.locator("#trigger-button").click()

    # The run page: no worker serves the queue yet, so the run is queued and the page says why.
    page.wait_for_url("**/ui/run?**")
    expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "queued")
    expect(page.locator("#waiting")).to_contain_text(f"waits for a worker on queue '{console.queue}'")
    expect(page.locator("#timeline li[data-state='queued']")).to_have_count(1)
    run_url = page.url

    # A worker starts: the page follows the run live, without a reload.
    with worker_process(console.server, console.directory, console.suffix) as worker:
        expect(page.locator("#timeline li[data-state='running']").first).to_be_visible()
        expect(page.locator("#timeline li[data-state='success']").first).to_be_visible()
        expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "success")
        assert page.url == run_url, "the page followed the run without navigating"
        states = page.locator("#timeline li").evaluate_all("items => items.map(li => li.dataset.state)")
        assert states.index("queued") < states.index("running") < states.index("success"), states

        # Its task instances (each on the worker) and the result task's result.
        for task_id in ("prepare", "answer", "tidy"):
            ti = page.locator(f"#tis-table tr[data-task-id='{task_id}']")
            expect(ti).to_have_attribute("data-state", "success")
            expect(ti).to_contain_text(f"console-worker{console.suffix}")
        expect(page.locator("#outcome [data-result='answer']")).to_contain_text('"greeting": "Hello, Ada!"')
        expect(page.locator("#waiting-section")).to_be_hidden()
        expect(page.locator("#cancel-button")).to_be_disabled()
        _shot(console, page, "run")

        # A result over the inline limit is shown by reference and downloaded through the run's blob route.
        with console.api("runs:write") as api:
            big = api.post(
                f"/api/v2/dags/{console.dag_id}/dagRuns",
                json={"logical_date": None, "conf": {"name": "Big", "hold": 0, "pad": 10_000}},
                headers={"Prefer": "wait=60"},
            )
        assert big.status_code == 200 and big.json()["state"] == "success", big.text
        page.goto(_run_url(console, console.dag_id, big.json()["dag_run_id"]))
        download_button = page.get_by_role("button", name=re.compile(r"Download answer\.json"))
        expect(download_button).to_be_visible()
        with page.expect_download() as download:
            download_button.click()
        with open(download.value.path(), "rb") as saved:
            assert json.loads(saved.read()) == {"greeting": "Hello, Big!", "pad": "x" * 10_000}
        # At phone width its reference (a sha256 without a space) wraps rather than widen the page.
        page.set_viewport_size({"width": 375, "height": 740})
        expect(page.locator("#outcome")).to_contain_text("Stored by reference (sha256 ")
        assert _page_width(page) <= 375
        page.set_viewport_size({"width": 1280, "height": 900})

        # A failed run's outcome says why, in the failed try's words, as text (never as markup).
        with console.api("runs:write") as api:
            failed = api.post(
                f"/api/v2/dags/{console.dag_id}/dagRuns",
                json={"logical_date": None, "conf": {"name": "Eve", "hold": 0, "fail": "no <b>greeting</b>"}},
                headers={"Prefer": "wait=60"},
            )
        assert failed.status_code == 200 and failed.json()["state"] == "failed", failed.text
        assert "no <b>greeting</b>" in failed.json()["error"], failed.text
        page.goto(_run_url(console, console.dag_id, failed.json()["dag_run_id"]))
        expect(page.locator("#outcome pre")).to_contain_text("no <b>greeting</b>")
        # Said in the outcome's own words (an outsider saw "task X failed" for an upstream_failed task).
        expect(page.locator("#outcome p").first).to_contain_text("— task 'answer' failed")
        expect(page.locator("#outcome b")).to_have_count(0)

        # The workers page, from the server's worker registry: the worker, idle now (it waits for work,
        # claiming nothing), with its host, pid and queue.
        page.goto(console.url("/ui/workers"))
        seen = page.locator(f"tr[data-worker='console-worker{console.suffix}']")
        expect(seen).to_contain_text(console.queue)
        expect(seen).to_contain_text(socket.gethostname())
        expect(seen.locator("td").nth(1)).to_have_text(str(worker.pid))
        expect(seen.locator("td[data-running]")).to_have_attribute("data-running", "0")
        expect(page.locator(f"tr[data-queue='{console.queue}']")).to_be_visible()
        expect(page.locator("#workers-live")).to_contain_text("Live")
        _shot(console, page, "workers")

    # The runs list, filtered to the DAG: newest first (the failed run, then the big one).
    page.goto(console.url(f"/ui/runs?dag_id={console.dag_id}"))
    rows = page.locator("#runs-table tbody tr[data-run-id]")
    expect(rows.first.locator("[data-state]")).to_have_attribute("data-state", "failed")
    expect(rows.nth(1).locator("[data-state]")).to_have_attribute("data-state", "success")
    expect(page.locator("#runs-live")).to_contain_text("Live")
    # A run triggered elsewhere shows up without a reload: pushed by the run event stream (the page
    # re-reads only while that stream is down, and it is up).
    with console.api("runs:write") as api:
        pushed = api.post(
            f"/api/v2/dags/{console.dag_id}/dagRuns", json={"logical_date": None, "conf": {"hold": 0}}
        )
    pushed_id = pushed.json()["dag_run_id"]
    expect(page.locator(f"#runs-table tbody tr[data-run-id='{pushed_id}'] [data-state]")).to_have_attribute(
        "data-state", "queued"
    )
    _shot(console, page, "runs")

    # The state the task wrote, opened from its task instance.
    page.goto(run_url)
    page.locator("#tis-table tr[data-task-id='prepare']").get_by_role(
        "link", name="State keys of prepare"
    ).click()
    page.wait_for_url("**/ui/state?**")
    page.locator("tr[data-key='note']").get_by_role("link", name="note").click()
    value = page.get_by_label("Value (JSON)")
    expect(value).to_have_value(json.dumps({"name": "Ada"}, indent=2))

    expect(page.locator("#state-live")).to_contain_text("Live")

    # Someone else writes the key: the page shows the new value live, without a reload.
    run_id = page.locator("#s-run").input_value()
    run_path = f"/api/v2/dags/{console.dag_id}/dagRuns/{quote(run_id, safe='')}"
    key_path = f"{run_path}/taskInstances/prepare/state-store/note"
    with console.api("state:admin") as api:
        api.patch(key_path, json={"value": {"name": "Grace"}}).raise_for_status()
    expect(value).to_have_value(json.dumps({"name": "Grace"}, indent=2))
    expect(page.locator("#value-status")).to_contain_text("Updated live")

    # While the operator edits, another write is announced but does not overwrite the edit; saving the
    # edit, made on the version this page loaded, is refused.
    value.fill(json.dumps({"name": "Ada Lovelace"}))
    with console.api("state:admin") as api:
        api.patch(key_path, json={"value": {"name": "Hopper"}}).raise_for_status()
    expect(page.locator("#value-status")).to_contain_text("Changed on the server")
    expect(value).to_have_value(json.dumps({"name": "Ada Lovelace"}))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-error")).to_contain_text(
        "Refused: the value changed since you loaded version"
    )
    _shot(console, page, "state")
    with console.api("state:admin") as api:
        assert api.get(key_path).json()["value"] == {"name": "Hopper"}, "the stale edit changed nothing"

    # Reloaded, the edit goes through; then the key is deleted.
    page.get_by_role("button", name="Reload").click()
    expect(value).to_have_value(json.dumps({"name": "Hopper"}, indent=2))
    value.fill(json.dumps({"name": "Ada Lovelace"}))
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-status")).to_contain_text("Saved")
    with console.api("state:admin") as api:
        saved = api.get(key_path).json()
    assert saved["value"] == {"name": "Ada Lovelace"}
    # "Updated" says when the version saved was written, not when the one loaded was.
    updated = page.locator("#value-facts dd").nth(1).locator("time")
    expect(updated).to_have_attribute("datetime", saved["updated_at"])
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("tr[data-key='note']")).to_have_count(0)
    with console.api("state:admin") as api:
        assert api.get(key_path).status_code == 404

    # The DAG page lists its latest runs; back on the DAG list, the last hour's runs are counted.
    page.goto(console.url(f"/ui/dag?dag_id={console.dag_id}"))
    expect(page.locator("#dag-runs-table tbody tr[data-run-id]")).to_have_count(4)
    _shot(console, page, "dag")
    page.goto(console.url("/ui/dags"))
    expect(row.locator(".counts a[aria-label='2 success']")).to_be_visible()
    expect(row.locator(".counts a[aria-label='1 failed']")).to_be_visible()
    expect(row.locator(".counts a[aria-label='1 queued']")).to_be_visible()
    expect(page.locator("#dags-live")).to_contain_text("Live")
    # A run triggered elsewhere is counted without a reload (pushed by the run event stream).
    with console.api("runs:write") as api:
        api.post(f"/api/v2/dags/{console.dag_id}/dagRuns", json={"logical_date": None}).raise_for_status()
    expect(row.locator(".counts a[aria-label='2 queued']")).to_be_visible()
    _shot(console, page, "dags")


# Clicks the re-trigger button even though it is disabled, and returns the URLs the click fetched (a click
# handler calls fetch() before its first await, so none is missed).
FORCED_RETRIGGER = """() => {
    const calls = [], real = window.fetch;
    window.fetch = (...args) => { calls.push(String(args[0])); return real(...args); };
    try {
        const button = document.getElementById("retrigger-button");
        button.disabled = false;
        button.click();
    } finally { window.fetch = real; }
    return calls;
}"""


def test_a_live_page_takes_the_token_its_stream_renewed(console: Console, page: Any) -> None:
    # A 20 s token: the DAGs page's event stream renews it 15 s before it expires and sends it; the page
    # keeps it for its calls, and stays live (no reconnect: the stream goes on under the new token).
    token = console.server.tokens.mint_api_token("tests", frozenset({"runs:read"}), ttl_s=20)
    time.sleep(1.1)  # a renewal must extend the token: not in the second it was minted
    _sign_in_at(page, console.url("/ui/dags"), token)
    live = page.locator("#dags-live")
    expect(live).to_have_text("Live: updated as the server announces changes.")
    held = page.evaluate("() => Object.values(sessionStorage)")
    page.wait_for_function(
        "held => !Object.values(sessionStorage).some(v => held.includes(v))", arg=held, timeout=15_000
    )
    expect(live).to_have_text("Live: updated as the server announces changes.")


def test_an_operator_cancels_a_waiting_run(console: Console, page: Any) -> None:
    with console.api("runs:write") as api:
        created = api.post(
            f"/api/v2/dags/{console.parked_id}/dagRuns", json={"logical_date": None, "conf": {"n": 1}}
        )
        created.raise_for_status()
    run_id = created.json()["dag_run_id"]
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write"))

    # A run that does not exist: nothing to show, nothing to act on, and no trigger even if forced.
    page.goto(_run_url(console, console.parked_id, "does-not-exist"))
    expect(page.locator("#notice")).to_have_text(f"No run does-not-exist of DAG {console.parked_id}.")
    for name in ("Cancel run", "Trigger again with the same conf"):
        expect(page.get_by_role("button", name=name)).to_be_disabled()
    expect(page.locator("#actions-reason")).to_have_text("There is no such run to cancel or trigger again.")
    expect(page.locator("#outcome")).to_be_hidden()
    assert page.evaluate(FORCED_RETRIGGER) == []
    # An address without a run id: a console page that says so (422), not the API's JSON.
    answer = page.goto(console.url(f"/ui/run?dag_id={console.parked_id}"))
    assert answer is not None and answer.status == 422
    expect(page.locator("#problems")).to_have_text("run_id is missing.")
    expect(page.get_by_role("link", name="Runs").last).to_have_attribute("href", "/ui/runs")

    page.goto(_run_url(console, console.parked_id, run_id))
    expect(page.locator("#waiting")).to_contain_text(f"waits for a worker on queue 'nobody{console.suffix}'")
    # The server's reason, once the task instance has waited STATEPORT_UNCLAIMED_AFTER_S for a claim.
    expect(page.locator("#waiting")).to_contain_text(
        f"The server says: queued: no worker serving DAG '{console.parked_id}' claimed queue "
        f"'nobody{console.suffix}' for "
    )
    _shot(console, page, "run-waiting")

    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "failed")
    expect(page.locator("#outcome")).to_contain_text("cancelled")
    expect(page.locator("#timeline li[data-state='failed']").first).to_be_visible()
    with console.api("runs:read") as api:
        run = api.get(f"/api/v2/dags/{console.parked_id}/dagRuns/{quote(run_id, safe='')}").json()
    assert run["state"] == "failed" and run["outcome"]["reason"] == "cancelled"

    # Triggered again with the same conf: a new run of the DAG.
    page.get_by_role("button", name="Trigger again with the same conf").click()
    page.wait_for_url(lambda url: quote(run_id, safe="") not in url)
    expect(page.locator("#run-conf")).to_contain_text('"n": 1')


def test_a_dag_that_is_not_registered_cannot_be_triggered_from_its_page(console: Console, page: Any) -> None:
    # An outsider's find: the Trigger button of a DAG page whose DAG does not exist stayed enabled.
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write"))
    page.goto(console.url("/ui/dag?dag_id=no-such-dag"))
    expect(page.locator("#trigger-reason")).to_have_text(
        "No DAG no-such-dag is registered: register it, then trigger it."
    )
    expect(page.locator("#trigger-button")).to_be_disabled()
    page.locator("#conf").fill('{"a": 1}')  # a valid conf does not enable it again
    expect(page.locator("#trigger-button")).to_be_disabled()


async def _register_unreadable(
    console: Console, dag_id: str, spec: DagSpec, *, broken: bool, runs: list[str] | None = None
) -> None:
    """Register ``dag_id`` straight into the console server's database, by a process of its own, trigger a
    run of it (its id into ``runs``) and make its stored spec unreadable (``broken``), or mend it; the
    server has never read it."""
    settings = load_settings({}, data_dir=str(console.directory / "own"), database_url=console.database_url)
    services = await open_services(settings, migrate=False)
    try:
        if broken:
            await services.runs.register_dag(dag_id, spec)
            run = await services.runs.trigger(dag_id)
            if runs is not None:
                runs.append(run.run_id)
            await break_spec(services.stores.dags, dag_id)
        else:
            await mend_spec(services.stores.dags, dag_id, msgspec.to_builtins(spec))
    finally:
        await services.close()


def test_a_dag_whose_spec_cannot_be_read_is_shown_so_and_cannot_be_triggered(
    console: Console, page: Any
) -> None:
    # An outsider's find: such a DAG was listed with 0 tasks, its page said it had no result task, drew a
    # graph of negative size and left Trigger enabled (the server refuses the trigger).
    dag_id = f"unreadable{console.suffix}"
    # A queue no worker claims: the run stays queued.
    spec = DagSpec(tasks=[TaskSpec(task_id="a", queue=f"{console.queue}_none")], result_task="a")
    runs: list[str] = []
    run_apart(_register_unreadable(console, dag_id, spec, broken=True, runs=runs))
    try:
        _sign_in(console, page, console.server.api_token("runs:read", "runs:write"))
        page.locator("#dag-prefix").fill(dag_id)
        page.locator("#dag-filter").get_by_role("button", name="Filter").click()
        row = page.locator(f'tr[data-dag-id="{dag_id}"]')
        expect(row).to_contain_text("spec cannot be read")
        page.goto(console.url(f"/ui/dag?dag_id={quote(dag_id, safe='')}"))
        expect(page.locator("#trigger-reason")).to_have_text(
            "The DAG's spec cannot be read: register it again to trigger it."
        )
        expect(page.locator("#dag-facts")).to_contain_text("cannot be read")
        expect(page.locator("#dag-graph")).to_have_text("No graph: the spec cannot be read.")
        expect(page.locator("#trigger-button")).to_be_disabled()
        page.locator("#conf").fill('{"a": 1}')  # a valid conf does not enable it again
        expect(page.locator("#trigger-button")).to_be_disabled()
        # Its run can be cancelled, not triggered again (the outsider's re-check: it was offered).
        page.goto(_run_url(console, dag_id, runs[0]))
        expect(page.locator("#actions-reason")).to_have_text(
            "Its DAG's spec cannot be read: register it again to trigger it."
        )
        expect(page.locator("#retrigger-button")).to_be_disabled()
        expect(page.locator("#cancel-button")).to_be_enabled()
    finally:
        run_apart(_register_unreadable(console, dag_id, spec, broken=False))


def test_a_token_the_server_refuses_for_its_scope_claim_does_not_sign_in(console: Console, page: Any) -> None:
    # An outsider's find: the sign-in took any 403 whose detail mentioned "scope" for a token lacking
    # runs:read, so a validly signed token whose scope claim is a list signed in, and every page failed.
    now = int(time.time())
    claims = {"sub": "t", "aud": "urn:stateport:api", "scope": ["runs:read"], "iat": now, "exp": now + 600}
    odd = jwt.encode(claims, SECRET, algorithm="HS512")
    page.goto(console.url("/ui/login"))
    page.get_by_label("API token").fill(odd)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("scope must be")
    assert "/ui/login" in page.url
    assert page.evaluate("() => sessionStorage.getItem('stateport.token')") is None


def test_a_token_that_opens_no_page_does_not_sign_in_and_a_bearer_prefix_is_taken_off(
    console: Console, page: Any
) -> None:
    # An outsider's find: a worker's token (scope worker) signed in, and every page then re-read in vain
    # every 10 s; "Bearer <token>" pasted was refused as an invalid token.
    page.goto(console.url("/ui/login"))
    page.get_by_label("API token").fill(console.server.api_token("worker"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("neither the 'runs:read' nor the 'state:admin'")
    expect(page.locator("#login-error")).to_contain_text("its scopes: worker")
    assert "/ui/login" in page.url
    assert page.evaluate("() => sessionStorage.getItem('stateport.token')") is None
    page.get_by_label("API token").fill("Bearer " + console.server.api_token("state:admin"))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/dags")  # state:admin alone opens the State page, so it signs in


def test_a_token_without_the_scope_sees_the_action_disabled_and_the_server_refuses_it(
    console: Console, page: Any
) -> None:
    _sign_in(console, page, console.server.api_token("runs:read"))
    page.goto(console.url(f"/ui/dag?dag_id={console.dag_id}"))
    button = page.locator("#trigger-button")
    expect(button).to_be_disabled()
    expect(page.locator("#trigger-reason")).to_have_text("Needs a token with the 'runs:write' scope.")
    # The page's own script, asked to trigger anyway: the server refuses the token.
    status = page.evaluate(
        """async (dagId) => {
            const r = await fetch('/api/v2/dags/' + dagId + '/dagRuns', {method: 'POST',
              headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('stateport.token'),
                        'Content-Type': 'application/json'},
              body: JSON.stringify({logical_date: null, conf: {}})});
            return [r.status, (await r.json()).detail];
        }""",
        console.dag_id,
    )
    assert status == [403, "This token lacks the 'runs:write' scope required for this endpoint"]
    page.goto(console.url("/ui/state"))
    expect(page.locator("#state-reason")).to_contain_text("needs a token with the 'state:admin' scope")
    expect(page.locator("#task-form").get_by_role("button", name="List keys")).to_be_disabled()
    expect(page.locator("#save-button")).to_be_disabled()


def _page_width(page: Any) -> int:
    """How wide the document is: wider than the viewport means the page scrolls sideways."""
    width: int = page.evaluate("document.documentElement.scrollWidth")
    return width


# Each table wider than its scrolling box: a column pushed out of sight.
OVERFLOWING_TABLES = """() => Array.from(document.querySelectorAll(".table-wrap"))
    .filter(wrap => wrap.scrollWidth > wrap.clientWidth)
    .map(wrap => wrap.querySelector("table").id)"""


def _fits(page: Any, width: int, name: str) -> None:
    """The page scrolls not sideways, and no table hides a column in its scrolling box."""
    assert _page_width(page) <= width, f"the {name} page is wider than {width} px"
    assert page.evaluate(OVERFLOWING_TABLES) == [], f"a column out of sight on the {name} page"


@pytest.mark.parametrize("width", [375, 1366])
def test_ids_as_long_as_the_api_allows_fit_the_screen(console: Console, browser: Any, width: int) -> None:
    """A DAG, tasks and a run with ids near 250 characters, none with a space: nothing scrolls sideways."""
    long_task = "t" * 240
    run_id = f"long_run_{width}_" + "r" * 225
    with console.api("runs:write") as api:
        api.post(
            f"/api/v2/dags/{quote(console.wide_id, safe='')}/dagRuns",
            json={"logical_date": None, "dag_run_id": run_id, "conf": {}},
        ).raise_for_status()
    context = browser.new_context(viewport={"width": width, "height": 800})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        _sign_in(console, page, console.server.api_token("runs:read"))
        # Filtered to it: a database shared with other tests may list more DAGs than a page holds.
        page.get_by_label("DAG id starts with").fill(f"wide{console.suffix}")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator(f"tr[data-dag-id='{console.wide_id}'] .counts")).to_be_visible()
        _fits(page, width, "DAGs")
        page.goto(console.url(f"/ui/dag?dag_id={quote(console.wide_id, safe='')}"))
        expect(page.locator("#tasks-table tbody tr")).to_have_count(2)
        expect(page.locator(f"#dag-runs-table tr[data-run-id='{run_id}']")).to_be_visible()
        _fits(page, width, "DAG")
        page.goto(console.url(f"/ui/runs?dag_id={quote(console.wide_id, safe='')}"))
        expect(page.locator(f"#runs-table tr[data-run-id='{run_id}']")).to_be_visible()
        _fits(page, width, "Runs")
        page.goto(_run_url(console, console.wide_id, run_id))
        expect(page.locator("#waiting")).to_contain_text(f"{long_task} is ready and waits")
        expect(page.locator("#waiting")).to_contain_text(f"waits for upstream {long_task}")
        expect(page.locator("#tis-table tbody tr[data-task-id]")).to_have_count(2)
        _fits(page, width, "Run")
        # A since= no date can be computed from is said, not left "Loading…".
        page.goto(console.url("/ui/runs?since=99999999999999"))
        expect(page.locator("#runs-table tbody td.error")).to_contain_text(
            "since=99999999999999 is not a whole number of seconds"
        )
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"


def test_the_console_fits_a_phone(console: Console, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        token = console.server.api_token("runs:read")
        page.goto(console.url("/ui/login"))
        page.get_by_label("API token").fill(token)
        page.keyboard.press("Tab")
        # Keyboard only: the focused button signs in.
        expect(page.get_by_role("button", name="Sign in")).to_be_focused()
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui/dags")
        expect(page.locator(f"tr[data-dag-id='{console.dag_id}']")).to_be_visible()
        # Nothing wider than the screen but the tables' own scrolling boxes.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, width
        _shot(console, page, "dags-phone")
        # A run of its own: the test may run apart from the others (pytest-xdist), on a server of its own.
        with console.api("runs:write") as api:
            api.post(
                f"/api/v2/dags/{console.parked_id}/dagRuns", json={"logical_date": None, "conf": {}}
            ).raise_for_status()
        page.goto(console.url("/ui/runs"))
        expect(page.locator("#runs-table tbody tr[data-run-id]").first).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, width
        _shot(console, page, "runs-phone")
    finally:
        context.close()


def test_an_operator_browses_and_edits_asset_state(console: Console, page: Any) -> None:
    asset = f"greetings{console.suffix}"
    with console.api("runs:read", "state:admin") as api:
        found = api.get("/api/v2/assets", params={"name_pattern": asset}).json()["assets"]
        (asset_id,) = [a["id"] for a in found if a["name"] == asset]
        for key, value in (("watermark/2026", 41), ("watermark/2025", 7), ("other", True)):
            api.put(f"/api/v2/assets/{asset_id}/state-store/{key}", json={"value": value}).raise_for_status()
    _sign_in(console, page, console.server.api_token("runs:read", "state:admin"))
    page.goto(console.url("/ui/state"))
    page.get_by_role("button", name="Asset state").click()
    page.get_by_label("Asset name").fill(asset)
    page.locator("#asset-form").get_by_label("Key prefix").fill("watermark/")
    page.locator("#asset-form").get_by_role("button", name="List keys").click()
    expect(page.locator("#keys-table tbody tr[data-key]")).to_have_count(2)
    expect(page.locator("#keys-caption")).to_contain_text("2 key(s) starting with 'watermark/'")
    page.get_by_role("link", name="watermark/2026").click()
    value = page.get_by_label("Value (JSON)")
    expect(value).to_have_value("41")
    value.fill("42")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-status")).to_contain_text("Saved")
    with console.api("state:admin") as api:
        entry = api.get(f"/api/v2/assets/{asset_id}/state-store/watermark/2026")
    assert entry.json()["value"] == 42
    # The asset is in the address: a reload (or a sign-in after the token expired) comes back to it (an
    # outsider's find: the page came back on the Task tab, the asset gone).
    assert parse_qs(urlsplit(page.url).query) == {"asset": [asset]}, page.url
    page.reload()
    expect(page.locator("#tab-asset")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_label("Asset name")).to_have_value(asset)
    expect(page.locator("#keys-table tbody tr[data-key]")).to_have_count(3)


def _act_on_the_expired_token(page: Any, selector: str) -> None:
    """Click ``selector``, whose call meets the expired token, and follow the page to the sign-in. A call
    of the page's own (a live refresh) may meet the token first and take the page there before the click:
    either way the page leaves through the same door, keeping what was typed."""
    with contextlib.suppress(playwright.Error):
        page.locator(selector).click(timeout=5_000)
    # Both ways at once: the second navigation aborts the first, which wait_for_url reports as an error
    # (net::ERR_ABORTED, seen on a loaded CI run); the page still arrives, by the other.
    with contextlib.suppress(playwright.Error):
        page.wait_for_url("**/ui/login?**")
    page.wait_for_url("**/ui/login?**")


def _expire_token(console: Console, page: Any, *scopes: str) -> None:
    """The tab's token swapped for one with the same scopes that expired a minute ago (past the server's
    leeway): the page shows and gates as before, and its next call answers 401."""
    expired = console.server.tokens.mint_api_token("tests", frozenset(scopes), ttl_s=-60)
    page.evaluate("t => sessionStorage.setItem('stateport.token', t)", expired)


def test_an_edit_outlives_a_sign_in_and_still_refuses_to_overwrite(console: Console, page: Any) -> None:
    # An outsider's find: a token that expired while the operator edited a value sent the page to sign in,
    # and the edit was gone when it came back.
    asset = f"greetings{console.suffix}"
    with console.api("runs:read", "state:admin") as api:
        found = api.get("/api/v2/assets", params={"name_pattern": asset}).json()["assets"]
        (asset_id,) = [a["id"] for a in found if a["name"] == asset]
        for key in ("draft/kept", "draft/moved"):
            api.put(f"/api/v2/assets/{asset_id}/state-store/{key}", json={"value": 1}).raise_for_status()
    token = console.server.api_token("runs:read", "state:admin")
    _sign_in(console, page, token)
    page.goto(console.url(f"/ui/state?asset={quote(asset, safe='')}"))
    value = page.get_by_label("Value (JSON)")

    def edit_then_lose_the_token(key: str) -> None:
        page.locator(f"tr[data-key='{key}']").get_by_role("link", name=key).click()
        expect(value).to_have_value("1")
        value.fill('{"edited": 2}')
        _expire_token(console, page, "runs:read", "state:admin")
        _act_on_the_expired_token(page, "#save-button")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/state?**")

    # Back at the same asset, the key open again with the edit over it; Save sends it.
    edit_then_lose_the_token("draft/kept")
    expect(page.locator("#value-key")).to_have_text("draft/kept")
    expect(value).to_have_value('{"edited": 2}')
    expect(page.locator("#value-status")).to_contain_text("is back after signing in; Save sends it")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-status")).to_contain_text("Saved")
    with console.api("state:admin") as api:
        assert api.get(f"/api/v2/assets/{asset_id}/state-store/draft/kept").json()["value"] == {"edited": 2}

    # A write made while the operator signed in is not overwritten: the edit keeps its version (If-Match).
    def write_while_signed_out(frame: Any) -> None:
        if "/ui/login" in frame.url:
            with console.api("state:admin") as api:
                api.put(f"/api/v2/assets/{asset_id}/state-store/draft/moved", json={"value": "theirs"})

    page.on("framenavigated", write_while_signed_out)
    edit_then_lose_the_token("draft/moved")
    expect(value).to_have_value('{"edited": 2}')
    expect(page.locator("#value-status")).to_contain_text("The value changed on the server since")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-error")).to_contain_text("Refused: the value changed since you loaded")
    with console.api("state:admin") as api:
        assert api.get(f"/api/v2/assets/{asset_id}/state-store/draft/moved").json()["value"] == "theirs"
    # Each draft is handed back once: a reload shows the stored value, not the edit again.
    page.reload()
    page.locator("tr[data-key='draft/moved']").get_by_role("link", name="draft/moved").click()
    expect(value).to_have_value('"theirs"')


def test_a_trigger_form_outlives_a_sign_in(console: Console, page: Any) -> None:
    token = console.server.api_token("runs:read", "runs:write")
    _sign_in(console, page, token)
    page.goto(console.url(f"/ui/dag?dag_id={quote(console.parked_id, safe='')}"))
    page.get_by_label("conf (a JSON object)").fill('{"n": 9007199254740993}')
    page.get_by_label("Run id (optional)").fill(f"kept{console.suffix}")
    _expire_token(console, page, "runs:read", "runs:write")
    _act_on_the_expired_token(page, "#trigger-button")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/dag?**")
    expect(page.get_by_label("conf (a JSON object)")).to_have_value('{"n": 9007199254740993}')
    expect(page.get_by_label("Run id (optional)")).to_have_value(f"kept{console.suffix}")
    expect(page.locator("#notice")).to_contain_text("nothing was triggered yet")
    page.locator("#trigger-button").click()
    page.wait_for_url("**/ui/run?**")
    with console.api("runs:read") as api:
        run = api.get(f"/api/v2/dags/{console.parked_id}/dagRuns/kept{console.suffix}")
    assert run.json()["conf"] == {"n": 9007199254740993}, run.text


def test_an_unknown_asset_leaves_no_other_scope_open(console: Console, page: Any) -> None:
    # An outsider's find: after a failed asset lookup the page still listed the previous scope's keys with
    # its key open, and Delete (confirmed as "Delete key other?") deleted it from that scope.
    asset = f"greetings{console.suffix}"
    with console.api("runs:read", "state:admin") as api:
        found = api.get("/api/v2/assets", params={"name_pattern": asset}).json()["assets"]
        (asset_id,) = [a["id"] for a in found if a["name"] == asset]
        api.put(f"/api/v2/assets/{asset_id}/state-store/kept", json={"value": 1}).raise_for_status()
    _sign_in(console, page, console.server.api_token("runs:read", "state:admin"))
    page.goto(console.url("/ui/state"))
    page.get_by_role("button", name="Asset state").click()
    page.locator("#asset-form").get_by_label("Key prefix").fill("kept")

    def open_kept() -> None:
        page.get_by_label("Asset name").fill(asset)
        page.locator("#asset-form").get_by_role("button", name="List keys").click()
        page.get_by_role("link", name="kept").click()
        expect(page.get_by_label("Value (JSON)")).to_have_value("1")

    open_kept()
    page.get_by_label("Asset name").fill(f"nope{console.suffix}")
    page.locator("#asset-form").get_by_role("button", name="List keys").click()
    expect(page.locator("#state-error")).to_contain_text(f"No asset is named nope{console.suffix}")
    expect(page.locator("#keys-table tbody tr")).to_have_count(0)
    expect(page.locator("#value-section")).to_be_hidden()
    open_kept()
    # Back on the asset, its key's Delete names the scope it deletes from.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#value-section")).to_be_hidden()
    assert dialogs == [f"Delete key kept of asset {asset}?"], dialogs
    with console.api("state:admin") as api:
        assert api.get(f"/api/v2/assets/{asset_id}/state-store/kept").status_code == 404


# Numbers that a JavaScript number would change: past 2**53, past a double's range of digits, -0.0, an
# exponent's spelling. The API keeps them as sent; so must a value shown, left as it is and saved.
EXACT = '{"id": 9007199254740993, "big": 123456789012345678901234567890, "neg0": -0.0, "e": 1E+2}'


def test_numbers_stay_exact_through_the_editor_and_the_trigger_form(console: Console, page: Any) -> None:
    asset = f"greetings{console.suffix}"
    with console.api("runs:read", "state:admin") as api:
        found = api.get("/api/v2/assets", params={"name_pattern": asset}).json()["assets"]
        (asset_id,) = [a["id"] for a in found if a["name"] == asset]
        key_path = f"/api/v2/assets/{asset_id}/state-store/exact"
        api.put(
            key_path, content=f'{{"value": {EXACT}}}', headers={"Content-Type": "application/json"}
        ).raise_for_status()
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write", "state:admin"))
    page.goto(console.url("/ui/state"))
    page.get_by_role("button", name="Asset state").click()
    page.get_by_label("Asset name").fill(asset)
    page.locator("#asset-form").get_by_label("Key prefix").fill("exact")
    page.locator("#asset-form").get_by_role("button", name="List keys").click()
    page.get_by_role("link", name="exact").click()
    value = page.get_by_label("Value (JSON)")
    for number in ("9007199254740993", "123456789012345678901234567890", "-0.0", "1E+2"):
        expect(value).to_have_value(re.compile(re.escape(number)))
    # Saved without an edit: a new version holding the very same numbers.
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#value-status")).to_contain_text("Saved")
    with console.api("state:admin") as api:
        stored = api.get(key_path).text
    for number in ("9007199254740993", "123456789012345678901234567890", "-0.0", "1E+2"):
        assert number in stored, stored
    # A number no JSON reader can hold is refused before it is sent, not stored as null.
    value.fill('{"x": 1e999}')
    expect(page.locator("#value-status")).to_contain_text("Number out of range")

    # The trigger form sends the conf as typed.
    page.goto(console.url(f"/ui/dag?dag_id={console.parked_id}"))
    conf = page.get_by_label("conf (a JSON object)")
    conf.fill('{"x": 1e999}')
    expect(page.locator("#conf-status")).to_contain_text("Number out of range")
    conf.fill('{"id": 9007199254740993}')
    page.get_by_role("button", name="Trigger").click()
    page.wait_for_url("**/ui/run?**")
    expect(page.locator("#run-conf")).to_contain_text("9007199254740993")
    run_id = page.evaluate("document.body.dataset.runId")
    with console.api("runs:read") as api:
        run = api.get(f"/api/v2/dags/{console.parked_id}/dagRuns/{quote(run_id, safe='')}").text
    assert '"id":9007199254740993' in run.replace(" ", ""), run


@pytest.fixture
def cached_page(browser: Any) -> Iterator[Any]:
    """A page of a browser with its back/forward cache on, as Chrome has it (Playwright turns it off)."""
    cached = browser.browser_type.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox"],
        ignore_default_args=["--disable-back-forward-cache"],
    )
    try:
        opened = cached.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.on("dialog", lambda dialog: dialog.accept())
        yield opened
        assert not errors, f"the page's script failed: {errors}"
    finally:
        cached.close()


def test_pages_left_in_one_tab_leave_no_stream_open_and_an_action_still_reaches_the_server(
    console: Console, cached_page: Any
) -> None:
    # An outsider's find: the browser keeps each page left in its back/forward cache, and with it the
    # page's streams, each on one of the six connections HTTP/1.1 allows per server. After five page
    # changes in one tab, a confirmed Cancel waited for a free connection for up to a minute.
    page = cached_page
    with console.api("runs:write") as api:
        created = api.post(f"/api/v2/dags/{console.parked_id}/dagRuns", json={"logical_date": None})
        created.raise_for_status()
    run_id = created.json()["dag_run_id"]
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write"))
    run_page = _run_url(console, console.parked_id, run_id)
    for _ in range(4):  # a Run page holds two streams (its wait stream and the run event stream)
        page.goto(run_page)
        expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "queued")
        page.get_by_role("link", name="Runs").first.click()
        page.wait_for_url("**/ui/runs")
        expect(page.locator("#runs-live")).to_contain_text("Live")
    page.goto(run_page)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "failed", timeout=10_000)
    with console.api("runs:read") as api:
        run = api.get(f"/api/v2/dags/{console.parked_id}/dagRuns/{quote(run_id, safe='')}").json()
    assert run["state"] == "failed" and run["outcome"]["reason"] == "cancelled"


def test_the_sign_in_form_never_puts_the_token_in_the_url(console: Console, browser: Any) -> None:
    # An outsider's find: with the page's script not running, the browser's own submit of the form sent
    # GET /ui/login?token=..., into the history and a proxy's access log.
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sent: list[str] = []
        page.on("request", lambda request: sent.append(request.url))
        page.goto(console.url("/ui/login"))
        expect(page.locator("noscript, .error").first).to_be_attached()
        page.get_by_label("API token").fill("header.payload.signature")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        assert not [url for url in sent if "payload" in url], sent
    finally:
        context.close()


def test_the_asset_tab_finds_an_asset_by_its_exact_name(console: Console, page: Any) -> None:
    # An outsider's find: the lookup took the first page of a substring search, with `\`, `%` and `_`
    # read as wildcards: `g\back`, or `bulk` after 100 older assets whose names hold it, were "not named".
    names = [f"abulk{i:03d}{console.suffix}" for i in range(101)]
    names += [f"bulk{console.suffix}", f"g\\back{console.suffix}", f"p%c_t{console.suffix}"]
    # `|` ORs a pattern's terms, and more than 100 terms are refused: such a name was "not named".
    names += [f"many{console.suffix}" + "|x" * 120, f"~|{console.suffix}| y"]
    dag_id = f"assets{console.suffix}"
    with console.api("dags:write", "runs:read", "state:admin") as api:
        spec = {"tasks": [{"task_id": "t", "outlets": names}]}
        api.put(f"/api/v2/dags/{dag_id}", json=spec).raise_for_status()
        for name in names[-5:]:
            api.put(
                f"/api/v2/state-store/asset/{quote(name, safe='')}/k", json={"value": name}
            ).raise_for_status()
    _sign_in(console, page, console.server.api_token("runs:read", "state:admin"))
    page.goto(console.url("/ui/state"))
    page.get_by_role("button", name="Asset state").click()
    for name in names[-5:]:
        page.get_by_label("Asset name").fill(name)
        page.locator("#asset-form").get_by_role("button", name="List keys").click()
        expect(page.locator("#keys-table tbody tr[data-key]")).to_have_count(1)
        expect(page.locator("#state-error")).to_have_text("")
        page.get_by_role("link", name="k", exact=True).click()
        expect(page.get_by_label("Value (JSON)")).to_have_value(json.dumps(name))


def test_a_wide_run_shows_a_page_of_task_instances_and_a_change_rereads_only_that_page(
    console: Console, page: Any
) -> None:
    # An outsider's find: the Run page read every page of a run's task instances on each change.
    dag_id = f"many{console.suffix}"
    tasks: list[dict[str, Any]] = [
        {"task_id": f"t{i:03d}", "queue": f"nobody{console.suffix}"} for i in range(150)
    ]
    tasks.append({"task_id": "last", "queue": f"nobody{console.suffix}", "upstream": ["t000", "t149"]})
    with console.api("dags:write", "runs:write") as api:
        api.put(f"/api/v2/dags/{dag_id}", json={"tasks": tasks}).raise_for_status()
        created = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {}})
        created.raise_for_status()
    run_id = created.json()["dag_run_id"]
    _sign_in(console, page, console.server.api_token("runs:read", "runs:write"))
    page.goto(_run_url(console, dag_id, run_id))
    rows = page.locator("#tis-table tbody tr[data-task-id]")
    expect(rows).to_have_count(100)
    expect(page.locator("#tis-caption")).to_contain_text("1\u2013100 of 151")
    expect(page.locator("#waiting")).to_contain_text("Read off task instances 1\u2013100 of 151")
    page.locator("#tis-pager").get_by_role("button", name="Next").click()
    expect(rows).to_have_count(51)
    expect(page.locator("#tis-caption")).to_contain_text("101\u2013151 of 151")
    # The waiting task's upstream t000 is on the other page: not named as waited for, nor as done.
    expect(page.locator("#waiting")).to_contain_text("last waits for upstream t149.")

    # A change (the run cancelled elsewhere) re-reads the run and the page shown, once each.
    read: list[str] = []

    def note(request: Any) -> None:
        if "/taskInstances" in request.url:
            read.append(request.url)

    page.on("request", note)
    with console.api("runs:write") as api:
        api.post(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/cancel").raise_for_status()
    expect(page.locator("#run-state [data-state]")).to_have_attribute("data-state", "failed")
    expect(rows.first).not_to_have_attribute("data-state", "queued")
    assert read and all("offset=100" in url for url in read), read


def test_a_run_page_reads_the_run_s_task_instances_at_most_twice_as_it_opens(
    console: Console, page: Any
) -> None:
    # An outsider's count: the first page of task instances was read four times as the page opened (its
    # load, the wait stream's first line, the live stream's opening read and its "watching").
    with console.api("runs:write") as api:
        created = api.post(f"/api/v2/dags/{console.parked_id}/dagRuns", json={"logical_date": None})
        created.raise_for_status()
    run_id = created.json()["dag_run_id"]
    _sign_in(console, page, console.server.api_token("runs:read"))
    read: list[str] = []

    def note(request: Any) -> None:
        if "/taskInstances" in request.url:
            read.append(request.url)

    page.on("request", note)
    page.goto(_run_url(console, console.parked_id, run_id))
    expect(page.locator("#run-live")).to_contain_text("Live")
    expect(page.locator("#timeline li")).to_have_count(1)
    page.wait_for_timeout(500)  # anything the page would read next has begun by now
    # Its load, and the live stream's "watching" (for what changed before it watched).
    assert 1 <= len(read) <= 2, read


def test_a_page_past_the_end_of_a_listing_says_so(console: Console, page: Any) -> None:
    # An outsider's find: /ui/runs?offset=100000 read "100001-28 of 28".
    with console.api("runs:write") as api:  # at least one run, whichever tests ran before
        api.post(f"/api/v2/dags/{console.parked_id}/dagRuns", json={"logical_date": None}).raise_for_status()
    _sign_in(console, page, console.server.api_token("runs:read"))
    page.goto(console.url("/ui/runs?offset=100000"))
    expect(page.locator("#runs-pager")).to_contain_text("nothing from 100001: there are ")
    # Newer goes to the last page at once, not 25 back (40,000 clicks from offset 1,000,000).
    page.get_by_role("button", name="Newer").click()
    expect(page.locator("#runs-pager")).not_to_contain_text("nothing from")
    expect(page.get_by_role("button", name="Older")).to_be_disabled()


def _a_run_of_dag_d(server: Server) -> tuple[str, str]:
    """A token for the console's pages and the id of a run of a one-task DAG 'd', made on ``server``."""
    token = server.api_token("runs:read", "runs:write", "dags:write")
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        http.put("/api/v2/dags/d", json={"tasks": [{"task_id": "t"}]}).raise_for_status()
        made = http.post("/api/v2/dags/d/dagRuns", json={"logical_date": None})
        made.raise_for_status()
    run_id: str = made.json()["dag_run_id"]
    return token, run_id


def test_a_listing_comes_back_when_the_server_answers_again(
    console: Console, page: Any, tmp_path: Path
) -> None:
    # An outsider's find: with the server gone, the runs table showed "TypeError: Failed to fetch", and
    # once the server was back and the page "Live" again, its re-read (the same runs as before) was never
    # drawn: the error stayed until a run changed. A server of its own, stopped and started on one port.
    data, port = tmp_path / "own", free_port()
    with run_logged_server(data, tmp_path / "first.log", port=port) as server:
        token, run_id = _a_run_of_dag_d(server)
        _sign_in_at(page, f"{server.base_url}/ui/runs", token)
        table, live = page.locator("#runs-table tbody"), page.locator("#runs-live")
        expect(table).to_contain_text(run_id)
        expect(live).to_contain_text("Live")
    # Stopped: the stream ends, and the page's re-read every 10 s meanwhile fails.
    expect(live).to_contain_text("Reconnecting", timeout=15_000)
    expect(table).to_contain_text("The server cannot be reached", timeout=20_000)
    expect(table).not_to_contain_text("TypeError")
    with run_logged_server(data, tmp_path / "again.log", port=port):
        expect(live).to_contain_text("Live", timeout=40_000)
        expect(table).to_contain_text(run_id, timeout=10_000)


def test_a_live_page_that_hears_nothing_says_it_is_reconnecting(browser: Any, tmp_path: Path) -> None:
    # An outsider's find: with the network dropping everything (nothing closed), every page said "Live" for
    # as long as the cut lasted. A stream that says nothing past the heartbeat's period is taken for lost.
    # Here the server's heartbeat is a minute and the page's patience (40 s) shortened to 3 s.
    with run_logged_server(tmp_path / "quiet", tmp_path / "quiet.log", watch_heartbeat_s="60") as server:
        token = server.api_token("runs:read")
        context = browser.new_context()
        try:
            page = context.new_page()
            page.add_init_script("window.STATEPORT_SILENT_MS = 3000")
            _sign_in_at(page, f"{server.base_url}/ui/runs", token)
            live = page.locator("#runs-live")
            expect(live).to_contain_text("Live")
            expect(live).to_contain_text("Reconnecting", timeout=10_000)
            expect(live).to_contain_text("Live", timeout=10_000)  # and back, the server being there
        finally:
            context.close()


def test_the_dag_and_run_pages_say_their_re_reads_fail_while_the_server_is_gone(
    browser: Any, tmp_path: Path
) -> None:
    # An outsider's find: with the server restarting, the DAG and Run pages said "Reconnecting" and
    # nothing of their re-reads failing (unlike the listings, which say it in their tables); what they
    # showed had silently stopped changing.
    data, port = tmp_path / "own", free_port()
    context = browser.new_context()
    try:
        pages = {"dag-runs-live": context.new_page(), "run-live": context.new_page()}
        with run_logged_server(data, tmp_path / "first.log", port=port) as server:
            token, run_id = _a_run_of_dag_d(server)
            run = f"{server.base_url}/ui/run?dag_id=d&run_id={quote(run_id, safe='')}"
            # Each tab signs in on its own (the token is kept in the tab's session storage).
            _sign_in_at(pages["dag-runs-live"], f"{server.base_url}/ui/dag?dag_id=d", token)
            _sign_in_at(pages["run-live"], run, token)
            for status, page in pages.items():
                expect(page.locator(f"#{status}")).to_contain_text("Live")
        failed = "The last re-read failed: The server cannot be reached"
        for status, page in pages.items():
            live = page.locator(f"#{status}")
            expect(live).to_contain_text("Reconnecting", timeout=15_000)
            expect(live).to_contain_text(failed, timeout=20_000)
        with run_logged_server(data, tmp_path / "again.log", port=port):
            for status, page in pages.items():
                live = page.locator(f"#{status}")
                expect(live).to_contain_text("Live", timeout=40_000)
                expect(live).not_to_contain_text("failed", timeout=10_000)
    finally:
        context.close()
