"""The console's pages: ``GET /ui/...`` answers an HTML shell per page, and ``/ui/static`` its CSS and
JavaScript, all shipped inside the package (no CDN, no build step).

A shell holds no data and needs no token: the page's script reads everything through the public API
(``/api/v2/...``) with the token the operator pasted, so what the console shows is what the API answers, and
the server checks every scope on every call as it does for any client (docs/console.md, "Auth").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from stateport import __version__
from stateport.domain.models import MAX_IDENTIFIER
from stateport.http.params import NAME_PATTERN

HERE = Path(__file__).parent
PREFIX = "/ui"
# The pages run only the console's own files: no inline script, nothing from another origin, and no
# framing (clickjacking an operator's cancel button). Styles set through the CSSOM stay allowed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The navigation, in order: (page, label).
NAV = (("dags", "DAGs"), ("runs", "Runs"), ("workers", "Workers"), ("state", "State"))


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The console's templates, for the app's ``template_config``."""
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


def _context(page: str, title: str, data: dict[str, str]) -> dict[str, Any]:
    """What every template reads (base.html.j2)."""
    return {
        "page": page,
        "title": title,
        "nav": NAV,
        "data": data,
        "version": __version__,
        "prefix": PREFIX,
        "script": True,
    }


def _page(page: str, title: str, **data: str) -> Template:
    """A page shell; ``data`` becomes the body's ``data-*`` attributes, which the page's script reads."""
    context = _context(page, title, data)
    return Template(template_name=f"{page}.html.j2", context=context, headers=SECURITY_HEADERS)


@get("/", include_in_schema=False)
async def home() -> Redirect:
    return Redirect(path=f"{PREFIX}/dags")


@get("/login", include_in_schema=False)
async def login() -> Template:
    return _page("login", "Sign in")


@get("/dags", include_in_schema=False)
async def dags_page() -> Template:
    return _page("dags", "DAGs")


# Ids travel in the query: a DAG or run id may hold "/", which a path segment cannot carry. They obey the
# API's rules for ids; one that does not (missing, empty, too long, with control characters) gets a 422 with
# a console page that says so, rather than the API's JSON error: the address was typed into a browser.
# fullmatch, since "$" alone would let a final newline through.
_NAME = re.compile(NAME_PATTERN)


def _id_problem(name: str, value: str | None) -> str | None:
    """Why ``value`` cannot be the id ``name`` of the address, in words; None when it can."""
    if value is None:
        return f"{name} is missing."
    if not value:
        return f"{name} is empty."
    if len(value) > MAX_IDENTIFIER:
        return f"{name} is longer than {MAX_IDENTIFIER} characters."
    if not _NAME.fullmatch(value):
        return f"{name} holds a control character."
    return None


@dataclass(frozen=True)
class _Usage:
    """How to address a page that names a DAG or a run, and where such ids are listed."""

    what: str
    usage: str
    listing: str
    listing_label: str


DAG_USAGE = _Usage("DAG", "/dag?dag_id=<DAG id>", "dags", "DAGs")
RUN_USAGE = _Usage("run", "/run?dag_id=<DAG id>&run_id=<run id>", "runs", "Runs")


def _bad_address(usage: _Usage, problems: list[str]) -> Template:
    """A 422 console page naming what the address lacks; it runs no page script (it reads nothing)."""
    context = _context("invalid", f"The address names no {usage.what}", {})
    context.update(
        script=False,
        problems=problems,
        what=usage.what,
        usage=usage.usage,
        listing=usage.listing,
        listing_label=usage.listing_label,
        max_id=MAX_IDENTIFIER,
    )
    return Template(
        template_name="invalid.html.j2", context=context, headers=SECURITY_HEADERS, status_code=422
    )


# Taken as sent, even absent or empty: the page says what is wrong with it (_id_problem).
PageId = Annotated[str | None, QueryParameter(required=False)]


def _problems(**ids: str | None) -> list[str]:
    """What is wrong with each id of the address, in its order; empty when nothing is."""
    return [problem for name, value in ids.items() if (problem := _id_problem(name, value))]


@get("/dag", include_in_schema=False)
async def dag_page(dag_id: PageId = None) -> Template:
    problems = _problems(dag_id=dag_id)
    if dag_id is None or problems:
        return _bad_address(DAG_USAGE, problems)
    return _page("dag", f"DAG {dag_id}", dag_id=dag_id)


@get("/runs", include_in_schema=False)
async def runs_page() -> Template:
    return _page("runs", "Runs")


@get("/run", include_in_schema=False)
async def run_page(dag_id: PageId = None, run_id: PageId = None) -> Template:
    problems = _problems(dag_id=dag_id, run_id=run_id)
    if dag_id is None or run_id is None or problems:
        return _bad_address(RUN_USAGE, problems)
    return _page("run", f"Run {run_id}", dag_id=dag_id, run_id=run_id)


@get("/workers", include_in_schema=False)
async def workers_page() -> Template:
    return _page("workers", "Workers")


@get("/state", include_in_schema=False)
async def state_page() -> Template:
    return _page("state", "State")


# The pages whose forms a browser would post without the script (under PREFIX).
FORM_PAGES = ("/login", "/dag", "/state")
# The paths they are posted to, which the request guard lets through whatever their body's type.
FORM_PATHS = frozenset(PREFIX + page for page in FORM_PAGES)


# The forms that sign in, trigger and save are sent by the pages' scripts, as API calls. Without a script
# the browser posts the form to the page's own address; it is answered with a page saying so (405, as the
# address takes only GET), not the API's JSON 405, which a browser showed as raw text (an outsider's find).
# The body is never read.
@post(list(FORM_PAGES), include_in_schema=False, status_code=405)
async def form_without_script(request: Request[Any, Any, Any]) -> Template:
    context = _context("noscript", "The console needs JavaScript", {})
    query = request.url.query
    context.update(script=False, back=request.url.path + (f"?{query}" if query else ""))
    # The page's methods but this one, as every 405 and OPTIONS name them (``options.REFUSED_METHODS``;
    # HEAD, answered as the GET, is not listed: docs/api.md).
    headers = {**SECURITY_HEADERS, "Allow": "GET, OPTIONS"}
    return Template(template_name="noscript.html.j2", context=context, headers=headers, status_code=405)


def handlers() -> list[HTTPRouteHandler]:
    return [
        home,
        login,
        dags_page,
        dag_page,
        runs_page,
        run_page,
        workers_page,
        state_page,
        form_without_script,
    ]


async def _nosniff(response: Response[Any]) -> Response[Any]:
    """The static files too: a file answered with an unexpected type must not be run as script or style."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# The console's files: ``/ui/static`` answers these and nothing else.
STATIC_FILES = frozenset(path.name for path in (HERE / "static").iterdir() if path.is_file())


async def _known_file(request: Request[Any, Any, Any]) -> None:
    """404 for a name that is none of the console's files, before Litestar's static router looks it up on
    disk: a name holding a NUL, too long for the file system, or below a file answered 500 there (an
    outsider's find)."""
    if str(request.path_params.get("file_path", "")).lstrip("/") not in STATIC_FILES:
        raise NotFoundException()


def router() -> Router:
    """``/ui``: the pages, and ``/ui/static`` the files they load."""
    static = create_static_files_router(
        path="/static",
        directories=[HERE / "static"],
        include_in_schema=False,
        name="console-static",
        # Files change with the package; pages ask for them with ``?v=<version>``.
        cache_control=None,
        after_request=_nosniff,
        before_request=_known_file,
    )
    return Router(PREFIX, route_handlers=[*handlers(), static])
