"""The console's page shells (``/ui``, docs/console.md): what the server answers before any script runs.

The browser tests (tests/e2e/test_console.py) drive the pages; these check, without a browser, that every
page is served with its files, holds no data, needs no token, escapes what its address carries, is kept
out of the OpenAPI document, and ships inside the package.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "src" / "http" / "console"
PAGES = [
    "/ui/login",
    "/ui/dags",
    "/ui/dag?dag_id=hello",
    "/ui/runs",
    "/ui/run?dag_id=a%2Fb&run_id=manual__2026-01-01T00%3A00%3A00%2B00%3A00",
    "/ui/workers",
    "/ui/state",
]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_is_a_shell_served_without_a_token_with_its_files(
    client: httpx.AsyncClient, path: str
) -> None:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
    # No inline script: everything the page runs is one of the console's files.
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts and all("src=" in attributes for attributes in scripts)
    for asset in re.findall(r'(?:src|href)="(/ui/static/[^"?]+)', page.text):
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert served.content


async def test_the_run_page_carries_its_ids_decoded_slashes_included(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/run?dag_id=a%2Fb&run_id=manual__2026-01-01T00%3A00%3A00%2B00%3A00")
    assert 'data-dag-id="a/b"' in page.text
    assert 'data-run-id="manual__2026-01-01T00:00:00+00:00"' in page.text


async def test_markup_in_an_address_is_escaped(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/dag?dag_id=a%22%3E%3Cscript%3Ex%3C%2Fscript%3E")
    assert page.status_code == 200
    assert "<script>x" not in page.text
    assert 'data-dag-id="a&#34;&gt;&lt;script&gt;' in page.text


async def test_the_console_root_goes_to_the_dags(client: httpx.AsyncClient) -> None:
    answer = await client.get("/ui", follow_redirects=False)
    assert answer.status_code in (301, 302, 307, 308)
    assert answer.headers["location"] == "/ui/dags"


async def test_the_pages_are_not_part_of_the_api_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    assert not [path for path in document["paths"] if path.startswith("/ui")]


def test_every_console_file_ships_in_the_package() -> None:
    """pyproject's package-data globs carry each template and static file into a wheel."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = globs["stateport"]
    files = [p for p in CONSOLE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert files
    for file in files:
        relative = file.relative_to(ROOT / "src").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.parametrize(
    ("path", "problems"),
    [
        ("/ui/dag?dag_id=", ["dag_id is empty."]),
        ("/ui/dag?dag_id=%00%01x", ["dag_id holds a control character."]),
        ("/ui/dag?dag_id=x%0A", ["dag_id holds a control character."]),
        ("/ui/dag", ["dag_id is missing."]),
        ("/ui/run?dag_id=a&run_id=%7F", ["run_id holds a control character."]),
        ("/ui/run?dag_id=a", ["run_id is missing."]),
        ("/ui/run", ["dag_id is missing.", "run_id is missing."]),
        ("/ui/dag?dag_id=" + "x" * 300, ["dag_id is longer than 250 characters."]),
    ],
)
async def test_an_id_the_api_would_refuse_is_a_422_console_page_saying_what_is_wrong(
    client: httpx.AsyncClient, path: str, problems: list[str]
) -> None:
    """An address typed into a browser gets a page of the console, not the API's JSON error."""
    answer = await client.get(path)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    listed = re.search(r'<ul id="problems">(.*?)</ul>', answer.text, re.S)
    assert listed is not None, answer.text
    assert re.findall(r"<li>(.*?)</li>", listed.group(1)) == problems
    # It reads nothing: console.js only (the header, when signed in), no page script, no data.
    assert re.findall(r'<script src="(/ui/static/[^"?]+)', answer.text) == ["/ui/static/console.js"]
    assert 'data-page="invalid"' in answer.text
    assert "\x00" not in answer.text and "x" * 300 not in answer.text


async def test_the_footer_links_to_the_api_document_served_here(client: httpx.AsyncClient) -> None:
    """Not /schema: its viewers load their scripts from a CDN, and the console works offline."""
    page = await client.get("/ui/dags")
    assert '<a href="/schema/openapi.json">API document (OpenAPI JSON)</a>' in page.text
    document = await client.get("/schema/openapi.json")
    assert document.status_code == 200
    assert document.json()["openapi"].startswith("3.")


async def test_the_static_files_are_not_sniffed(client: httpx.AsyncClient) -> None:
    served = await client.get("/ui/static/console.js")
    assert served.status_code == 200
    assert served.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "name", ["a%00b", "x" * 300, "console.css/x", "nope.js", "%2e%2e/pages.py", "sub/console.js"]
)
async def test_a_static_file_the_console_does_not_have_is_a_json_404(
    client: httpx.AsyncClient, name: str
) -> None:
    # An outsider's find: a NUL, a name too long for the file system, or one below a file answered 500
    # (and the NUL logged a traceback each time), where a missing file is a 404.
    answer = await client.get(f"/ui/static/{name}")
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("application/json")


async def test_forms_carrying_a_token_conf_or_value_never_submit_into_a_url(
    client: httpx.AsyncClient,
) -> None:
    # An outsider's find: with the page's script not running, the browser's own submit sent a GET with the
    # fields in the URL (the token at sign-in, a trigger's conf), into history and proxies' logs.
    for path, form in (
        ("/ui/login", "login-form"),
        ("/ui/dag?dag_id=d", "trigger-form"),
        ("/ui/state", "value-form"),
    ):
        html = (await client.get(path)).text
        found = re.search(rf'<form id="{form}"[^>]*>', html)
        assert found is not None and 'method="post"' in found.group(0), (path, found)
    assert 'name="token"' not in (await client.get("/ui/login")).text


@pytest.mark.parametrize("path", ["/ui/login", "/ui/dag?dag_id=d%3Cb%3E", "/ui/state?asset=a"])
async def test_a_form_posted_without_the_script_gets_a_page_saying_so(
    client: httpx.AsyncClient, path: str
) -> None:
    # An outsider's find: with JavaScript off, the sign-in form's own submit got the API's JSON 405, shown
    # by the browser as raw text. Nothing the form carried is read or acted on.
    answer = await client.post(path, data={"conf": '{"n": 1}', "run_id": "r"})
    assert answer.status_code == 405, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["allow"] == "GET, OPTIONS"  # the page's methods but the POST it refuses
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "The console needs JavaScript" in answer.text and "nothing changed" in answer.text
    assert "<b>" not in answer.text  # the address goes back as sent, still encoded
    back = re.search(r'<a href="([^"]+)">the page</a>', answer.text)
    assert back is not None and back.group(1) == path


@pytest.mark.parametrize("path", ["/ui/login", "/ui/dag", "/ui/state"])
async def test_a_form_page_names_one_set_of_methods_in_every_allow(
    client: httpx.AsyncClient, path: str
) -> None:
    # An outsider's find: OPTIONS, and the 405 of a PUT, named POST, which the page takes only to refuse.
    answers = [
        await client.options(path),
        await client.put(path),
        await client.delete(path),
        await client.post(path, data={"x": "1"}),
    ]
    assert [answer.status_code for answer in answers] == [204, 405, 405, 405]
    assert {answer.headers["allow"] for answer in answers} == {"GET, OPTIONS"}
