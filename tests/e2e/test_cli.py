"""The ``stateport`` command line, run as a user runs it: separate processes on a fresh data directory."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from stateport.adapters.jwt import JwtTokenService
from stateport.adapters.sql.errors import translate
from stateport.config import ConfigError, check_serving, load_settings
from stateport.domain.errors import Unwritable
from stateport.telemetry.metrics import LOCK_NAME, prepare_multiprocess
from tests.fixtures.rest import SECRET as REST_SECRET
from tests.fixtures.rest import Server, run_logged_server, run_server
from tests.fixtures.sql import admin_sql
from tests.services import free_port, require

STATEPORT = Path(sys.executable).with_name("stateport")
REPO = Path(__file__).resolve().parents[2]


def cli(
    data_dir: Path,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env["STATEPORT_DATA_DIR"] = str(data_dir)
    env.update(env_extra or {})
    done = subprocess.run(
        [str(STATEPORT), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def out(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


SPEC = {
    "tasks": [
        {"task_id": "extract", "outlets": ["orders"]},
        {"task_id": "fan", "upstream": ["extract"], "expand": "extract"},
        {"task_id": "answer", "upstream": ["extract"]},
    ],
    "result_task": "answer",
}


@pytest.mark.slow
@pytest.mark.longest  # some 26 processes one after another
def test_a_session_on_the_embedded_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "migrated" in cli(data, "migrate").stdout
    assert (data / "stateport.db").exists()

    spec_file = tmp_path / "dag.json"
    spec_file.write_text(json.dumps(SPEC))
    dag = out(cli(data, "dags", "register", "demo", str(spec_file)))
    assert dag["dag_id"] == "demo" and len(dag["version"]) == 16
    assert (
        out(cli(data, "dags", "register", "demo", "-", stdin=json.dumps(SPEC)))["version"] == dag["version"]
    )

    run = out(cli(data, "runs", "trigger", "demo", "--conf", '{"q": "why?"}', "--idempotency-key", "k1"))
    assert run["conf"] == {"q": "why?"}
    assert {ti["task_id"] for ti in run["task_instances"]} == {"extract", "answer"}
    again = out(cli(data, "runs", "trigger", "demo", "--conf", '{"q": "why?"}', "--idempotency-key", "k1"))
    assert again["dag_run_id"] == run["dag_run_id"]
    reused = cli(data, "runs", "trigger", "demo", "--idempotency-key", "k1", check=False)  # without the conf
    assert reused.returncode != 0 and "different request" in reused.stderr, reused
    listed = out(cli(data, "runs", "list", "demo", "--state", "queued", "--state", "running"))
    assert listed["total_entries"] == 1 and listed["dag_runs"][0]["dag_run_id"] == run["dag_run_id"]
    none = out(cli(data, "runs", "list", "demo", "--state", "success"))
    assert none["dag_runs"] == [] and none["total_entries"] == 0
    shown = out(cli(data, "runs", "show", "demo", run["dag_run_id"]))
    assert shown["dag_run_id"] == run["dag_run_id"] and len(shown["task_instances"]) == 2

    # The API's field names, as the API's DAGRunResponse and TaskInstanceResponse say them.
    assert run["dag_id"] == "demo" and run["state"] == "queued" and run["run_type"] == "manual"
    assert "run_id" not in run and "created_at" not in run and run["queued_at"]
    assert set(shown["task_instances"][0]) == {
        "id",
        "task_id",
        "map_index",
        "try_number",
        "state",
        "error",
        "hostname",
        "start_date",
        "end_date",
    }
    named = out(cli(data, "runs", "trigger", "demo", "--dag-run-id", "mine"))
    assert named["dag_run_id"] == "mine"
    old = out(cli(data, "runs", "trigger", "demo", "--run-id", "old-spelling"))  # kept as an alias
    assert old["dag_run_id"] == "old-spelling"

    scope = ["--dag-id", "demo", "--dag-run-id", run["dag_run_id"], "--task-id", "extract"]
    put = out(cli(data, "state", "put", *scope, "job/id", '{"id": 7}'))
    assert put["value"] == {"id": 7} and put["version"] == 1
    assert out(cli(data, "state", "get", *scope, "job/id"))["value"] == {"id": 7}
    short = ["--dag", "demo", "--run", run["dag_run_id"], "--task", "extract"]  # the first spellings
    assert out(cli(data, "state", "get", *short, "job/id"))["value"] == {"id": 7}
    listed = out(cli(data, "state", "list", *scope))
    assert listed["total_entries"] == 1 and listed["entries"][0]["key"] == "job/id"
    assert out(cli(data, "state", "list", *scope, "--prefix", "job/"))["total_entries"] == 1
    assert out(cli(data, "state", "list", *scope, "--prefix", "jobs"))["total_entries"] == 0
    assert out(cli(data, "state", "put", "--asset", "orders", "wm", '"2026-01-01"'))["value"] == "2026-01-01"
    assert out(cli(data, "state", "clear", *scope))["cleared"] == 1
    missing = cli(data, "state", "get", *scope, "job/id", check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr

    # Operators' writes check that the scope exists; reads of a missing key fail plainly.
    nowhere = cli(
        data, "state", "put", "--dag", "demo", "--run", "nope", "--task", "x", "k", "1", check=False
    )
    assert nowhere.returncode == 1 and "Task instance not found" in nowhere.stderr
    # A clear is not checked: a deleted run's state has no task instance left (docs/runs.md, retention).
    gone = ["--dag-id", "demo", "--dag-run-id", "nope", "--task-id", "x", "--all-map-indices"]
    assert out(cli(data, "state", "clear", *gone)) == {"cleared": 0}
    bad = cli(data, "state", "put", *scope, "k", "null", check=False)
    assert bad.returncode == 1 and "null" in bad.stderr

    assert out(cli(data, "cleanup"))["purged"] == 0
    # The run has not finished: no retention deletes it.
    kept = out(cli(data, "cleanup", "--runs-older-than", "0.000001"))
    assert kept == {"purged": 0, "runs_deleted": 0, "blobs_deleted": 0}
    assert out(cli(data, "runs", "show", "demo", run["dag_run_id"]))["dag_run_id"] == run["dag_run_id"]
    negative = cli(data, "cleanup", "--runs-older-than", "-1", check=False)
    assert negative.returncode != 0 and "--runs-older-than" in negative.stderr


def test_state_list_pages_by_cursor_and_leaves_values_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "migrate")
    cli(data, "dags", "register", "demo", "-", stdin=json.dumps(SPEC))  # declares the asset "orders"
    asset = ["--asset", "orders"]
    for key in ("f/b", "f/a", "f/c", "other"):
        cli(data, "state", "put", *asset, key, json.dumps(key))
    first = out(cli(data, "state", "list", *asset, "--prefix", "f/", "--limit", "2", "--cursor", ""))
    assert [e["key"] for e in first["entries"]] == ["f/a", "f/b"] and first["entries"][0]["value"] == "f/a"
    assert "total_entries" not in first and first["next_cursor"]
    rest = out(cli(data, "state", "list", *asset, "--prefix", "f/", "--cursor", first["next_cursor"]))
    assert [e["key"] for e in rest["entries"]] == ["f/c"] and rest["next_cursor"] is None
    keys = out(cli(data, "state", "list", *asset, "--keys-only"))
    assert [e["key"] for e in keys["entries"]] == ["f/a", "f/b", "f/c", "other"]
    assert all("value" not in e and e["version"] == 1 for e in keys["entries"])
    both = cli(data, "state", "list", *asset, "--cursor", "", "--offset", "1", check=False)
    assert both.returncode != 0 and "--offset" in both.stderr and "Traceback" not in both.stderr


def test_tokens_are_signed_with_the_data_dirs_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ti = uuid.uuid4()
    ti_token = cli(data, "token", "ti", str(ti)).stdout.strip()
    api_token = cli(data, "token", "api", "--scope", "runs:read state:admin").stdout.strip()
    tokens = JwtTokenService.from_settings(
        load_settings({"STATEPORT_JWT_SECRET": (data / "jwt_secret").read_text().strip()})
    )
    claims = tokens.verify_task_token(ti_token)
    assert claims.subject == str(ti)
    assert tokens.verify_api_token(api_token).scopes == {"runs:read", "state:admin"}
    bad = cli(data, "token", "api", "--scope", "root", check=False)
    assert bad.returncode == 2 and "unknown scopes" in bad.stderr
    empty = cli(data, "token", "api", "--scope", " ", check=False)
    assert (empty.returncode, empty.stdout) == (2, "") and "names no scope" in empty.stderr


def test_token_warns_when_it_generates_the_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = cli(data, "token", "ti", str(uuid.uuid4()))
    assert "warning: generated a new JWT secret in" in first.stderr
    assert str(data / "jwt_secret") in first.stderr
    assert "STATEPORT_DATA_DIR" in first.stderr and "STATEPORT_JWT_SECRET" in first.stderr
    assert first.stdout.count(".") == 2  # stdout is the token alone
    again = cli(data, "token", "api")
    assert "generated" not in again.stderr
    given = cli(tmp_path / "other", "token", "api", env_extra={"STATEPORT_JWT_SECRET": "s" * 64})
    assert "generated" not in given.stderr


def test_token_api_refuses_a_subject_the_server_would_refuse(tmp_path: Path) -> None:
    for subject in ("a\nb", "x" * 257, "", " lead"):
        done = cli(tmp_path / "data", "token", "api", "--subject", subject, check=False)
        assert done.returncode == 2 and done.stdout == "", done
        assert "stateport: --subject: the subject" in done.stderr, done.stderr


def test_token_api_says_the_ttl_it_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    default = cli(data, "token", "api")
    assert "API token valid for 10 minutes (--ttl 600)" in default.stderr
    assert "renewed while in use for up to 30 days" in default.stderr
    assert "any request in the last 5 minutes of its life renews it" in default.stderr
    assert "idle for longer than 5 minutes must get a new one" in default.stderr
    # At most 30 s: renewed by any request (the last 30 s always are).
    assert (
        "any request renews it, from its second second on" in cli(data, "token", "api", "--ttl", "30").stderr
    )
    assert "in the last 30 s of its life" in cli(data, "token", "api", "--ttl", "60").stderr
    short = cli(data, "token", "api", "--ttl", "5", env_extra={"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": "0"})
    assert "API token valid for 5 s (--ttl 5)" in short.stderr
    assert "API token valid for 1 day (--ttl 86400)" in cli(data, "token", "api", "--ttl", "86400").stderr
    # The lifetime it has, in whole seconds (an outsider's find: "valid for 1.5 s" of a 2 s token).
    assert "API token valid for 2 s (--ttl 1.5)" in cli(data, "token", "api", "--ttl", "1.5").stderr
    # And nothing said of a renewal that never comes (an outsider's find: "any request in the second half
    # of its life renews it" of a token never renewed).
    assert "never renewed" in short.stderr and "renews it" not in short.stderr
    # Nor of a token living as long as the maximum lifetime, which a renewal could never extend (an
    # outsider's find: a 31-day token was told it would be renewed).
    long = cli(data, "token", "api", "--ttl", str(31 * 86400))
    assert "never renewed: its lifetime is not shorter than" in long.stderr, long.stderr
    assert "renews it" not in long.stderr
    # Counted in whole seconds, as the server counts the maximum (an outsider's find: 8.64 s was said to
    # renew an 8 s token, which the server never extends), and the TTL shown as given.
    edge = cli(
        data, "token", "api", "--ttl", "8", env_extra={"STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS": "0.0001"}
    )
    assert "never renewed" in edge.stderr, edge.stderr
    assert "(--ttl 2591999)" in cli(data, "token", "api", "--ttl", "2591999").stderr
    token = short.stdout.strip()
    tokens = JwtTokenService.from_settings(
        load_settings({"STATEPORT_JWT_SECRET": (data / "jwt_secret").read_text().strip()})
    )
    claims = tokens.verify_api_token(token)
    assert claims.expires_at.timestamp() - claims.issued_at.timestamp() == 5
    # 0.9: JWT times are whole seconds; such a token was minted already expired (an outsider's probe).
    for bad in ("0", "0.9", "-5", "1e20", "nan"):
        refused = cli(data, "token", "api", "--ttl", bad, check=False)
        assert refused.returncode == 2 and "--ttl" in refused.stderr and "Traceback" not in refused.stderr
    # Not a number: said as such, not as argparse's "invalid _ttl value" (an outsider's find).
    worded = cli(data, "token", "api", "--ttl", "abc", check=False)
    assert "must be a number of seconds, not 'abc'" in worded.stderr and "_ttl" not in worded.stderr
    # A task scope named by the spellings the docs give (it named the older --dag, --run and --task).
    cli(data, "migrate")
    unscoped = cli(data, "state", "get", "k", check=False)
    assert "--dag-id, --dag-run-id and --task-id" in unscoped.stderr, unscoped.stderr


def test_commands_work_with_the_test_suites_variables_exported(tmp_path: Path) -> None:
    suite = {
        "STATEPORT_TEST_PG_DB": "stateport_test",
        "STATEPORT_TEST_PG_HOST": "127.0.0.1",
        "STATEPORT_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    data = tmp_path / "data"
    assert "migrated" in cli(data, "migrate", env_extra=suite).stdout
    assert cli(data, "token", "api", env_extra=suite).stdout.count(".") == 2
    missing = cli(data, "runs", "list", "nothing", env_extra=suite, check=False)
    assert missing.returncode == 1 and "DAG 'nothing' not found" in missing.stderr  # read the store: ran


@pytest.mark.parametrize(
    ("conf", "said"),
    [
        ("{name: x}", "JSON is malformed: object keys must be strings (byte 1)"),
        ('{"name": "x",}', "trailing comma in object (byte 13)"),
        # The API's rules for every JSON, as one-line argument errors (an outsider's probes: a traceback,
        # a 5,000-digit value repeated whole, "Input data was truncated").
        ('{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", "nests arrays and objects deeper than 64 levels"),
        ('{"a": ' + "9" * 5000 + "}", "holds a number out of range"),
        ('{"a": "\\ud800"}', "a lone UTF-16 surrogate"),
        ("[1, 2]", "not an array"),
        ('"x"', "not a string"),
        ("null", "not null"),
        ("3", "not a number"),
    ],
)
def test_a_conf_that_is_not_a_json_object_is_refused_as_an_argument(
    tmp_path: Path, conf: str, said: str
) -> None:
    # An outsider's probe: --conf '{name: x}' printed json's traceback (and [1] said so with exit 1, once
    # the database had been opened and migrated).
    refused = cli(tmp_path, "runs", "trigger", "hello", "--conf", conf, check=False)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("stateport runs trigger: error: argument --conf: must be a JSON object"), line
    assert said in line and len(line) < 800, line
    assert not (tmp_path / "stateport.db").exists()  # told before any store was opened


def test_arguments_read_from_text_or_a_file_are_refused_in_one_line(tmp_path: Path) -> None:
    when = cli(tmp_path, "state", "put", "--asset", "a", "k", "1", "--expires-at", "Tuesday", check=False)
    assert when.returncode == 2 and "Traceback" not in when.stderr
    (line,) = when.stderr.strip().splitlines()
    assert "argument --expires-at: must be an ISO-8601 time" in line and "'Tuesday'" in line, line

    missing = cli(tmp_path, "dags", "register", "demo", str(tmp_path / "nowhere.json"), check=False)
    assert missing.returncode == 2, missing.stderr
    assert (
        missing.stderr.strip()
        == f"stateport: SPEC_FILE {tmp_path / 'nowhere.json'}: No such file or directory"
    )
    garbled = cli(tmp_path, "dags", "register", "demo", "-", stdin='{"tasks": [', check=False)
    assert garbled.returncode == 2, garbled.stderr
    (line,) = garbled.stderr.strip().splitlines()
    assert line.startswith("stateport: SPEC_FILE -: not a DagSpec"), line
    assert not (tmp_path / "stateport.db").exists()


def test_a_run_of_a_dag_not_registered_says_how_to_register_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nothing = cli(data, "runs", "trigger", "nosuchdag", check=False)
    assert nothing.returncode == 1, nothing.stderr
    first, known, register = nothing.stderr.strip().splitlines()
    assert first == "stateport: NotFound: DAG 'nosuchdag' not found"
    # No DAG at all: perhaps not the server's database.
    assert "no DAG is registered in this database" in known and "STATEPORT_DATABASE_URL" in known
    assert "stateport dags register nosuchdag SPEC_FILE" in register and "--register" in register

    cli(data, "dags", "register", "demo", "-", stdin=json.dumps(SPEC))
    typo = cli(data, "runs", "list", "dmeo", check=False)
    assert typo.returncode == 1
    assert typo.stderr.strip().splitlines()[1:] == [
        "  registered DAGs: demo",
        "  register it with: stateport dags register dmeo SPEC_FILE (a DagSpec as JSON, docs/api.md), or "
        "start a worker for its module with --register: stateport worker MODULE --register",
    ]
    # The DAG is there, its run is not: nothing to register.
    no_run = cli(data, "runs", "show", "demo", "nope", check=False)
    assert no_run.returncode == 1
    (line,) = no_run.stderr.strip().splitlines()
    assert line.startswith("stateport: NotFound: The DagRun") and "nope" in line, line


def test_a_command_that_only_reads_creates_no_database_where_there_is_none(tmp_path: Path) -> None:
    # An outsider's find: a mistyped data directory got an empty database (and a secret) and answered
    # "nothing" rather than saying there was nothing there.
    data = tmp_path / "mistyped"
    for args in (("dags", "list"), ("runs", "list", "d"), ("state", "list", "--asset", "a")):
        done = cli(data, *args, check=False)
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"stateport: NotFound: no database at {data / 'stateport.db'}"), line
        assert "STATEPORT_DATA_DIR" in line
    assert not data.exists()
    # An empty file is no database either: nothing is migrated into it.
    data.mkdir()
    (data / "stateport.db").touch()
    empty = cli(data, "dags", "list", check=False)
    assert empty.returncode == 1 and "no database at" in empty.stderr, empty.stderr
    assert sorted(p.name for p in data.iterdir()) == ["stateport.db"]
    assert (data / "stateport.db").stat().st_size == 0
    # A command that writes creates it, as a server does; then reads read it.
    cli(data, "dags", "register", "demo", "-", stdin=json.dumps(SPEC))
    assert [dag["dag_id"] for dag in out(cli(data, "dags", "list"))["dags"]] == ["demo"]


def test_dags_list_prints_the_apis_collection_and_pages_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "migrate")
    assert out(cli(data, "dags", "list")) == {"dags": [], "total_entries": 0}
    for dag_id in ("beta", "alpha", "gamma_1"):
        cli(data, "dags", "register", dag_id, "-", stdin=json.dumps(SPEC))
    listed = out(cli(data, "dags", "list"))
    assert [d["dag_id"] for d in listed["dags"]] == ["alpha", "beta", "gamma_1"]
    assert listed["total_entries"] == 3 and listed["dags"][0]["tasks"]  # the API's DAGResponse
    page = out(cli(data, "dags", "list", "--limit", "1", "--offset", "1", "--pattern", "a"))
    assert [d["dag_id"] for d in page["dags"]] == ["beta"] and page["total_entries"] == 3
    # "_" is the API's one-character wildcard; a literal one is matched by it too.
    assert [d["dag_id"] for d in out(cli(data, "dags", "list", "--pattern", "a_1"))["dags"]] == ["gamma_1"]
    # Bounds the stores take, checked as arguments (status 2, one line), for every listing alike.
    for command, option, value in (
        (("dags", "list"), "--offset", "-1"),
        (("dags", "list"), "--limit", "1001"),
        (("dags", "list"), "--offset", "99999999999"),
        (("runs", "list", "alpha"), "--limit", "0"),
        (("runs", "list", "alpha"), "--offset", "99999999999"),
        (("state", "list", "--asset", "orders"), "--limit", "5000"),
    ):
        refused = cli(data, *command, option, value, check=False)
        assert refused.returncode == 2, (command, option, refused.stderr)
        assert option in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("token", "api"), ("migrate",)])
def test_a_jwt_secret_too_short_for_its_algorithm_is_refused(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # An outsider's probe: STATEPORT_JWT_SECRET=changeme served without a word, and `token api` printed
    # PyJWT's InsecureKeyLengthWarning. Any token then lets its holder guess the secret offline.
    weak = {"STATEPORT_JWT_SECRET": "changeme"}
    refused = cli(tmp_path, *command, env_extra=weak, check=False)
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(
        "stateport: configuration error: STATEPORT_JWT_SECRET is 8 bytes, too short for HS512, which needs "
        "at least 64"
    ), line
    assert "python3 -c 'import secrets; print(secrets.token_urlsafe(64))'" in line, line
    assert list(tmp_path.iterdir()) == []  # no database, no generated secret


def test_a_jwt_secret_of_the_algorithms_size_mints_without_a_warning(tmp_path: Path) -> None:
    for algorithm, secret in (("HS512", "é" * 32), ("HS256", "k" * 32)):  # 64 and 32 bytes of UTF-8
        env = {"STATEPORT_JWT_SECRET": secret, "STATEPORT_JWT_ALGORITHM": algorithm}
        minted = cli(tmp_path, "token", "api", env_extra=env)
        assert "Warning" not in minted.stderr, minted.stderr
        assert minted.stdout.count(".") == 2


def worker(server_url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``stateport worker examples.hello`` on ``server_url``, expected to stop at once (refused)."""
    return cli(
        REPO,  # its data directory is never used: a worker reads no server settings
        "worker",
        "examples.hello",
        "--app-dir",
        str(REPO),
        "--url",
        server_url,
        "--token",
        token,
        *args,
        check=False,
    )


def test_a_worker_refused_for_its_token_says_what_to_mint(stateport_server: Server) -> None:
    # An outsider's probe: --token garbage was told that the token needs the scope worker.
    url = stateport_server.base_url
    for args in ((), ("--register",)):
        garbage = worker(url, "garbage", *args)
        assert garbage.returncode == 1, garbage.stderr
        error, hint = garbage.stderr.strip().splitlines()[-2:]
        assert error == "stateport worker: Forbidden: Stateport server: 403 Invalid auth token"
        assert "could not read this token" in hint and "scope this worker needs" not in hint, hint
        scopes = "worker dags:write" if args else "worker"
        assert f"STATEPORT_DATA_DIR=<the server's> stateport token api --scope '{scopes}'" in hint, hint

    # Its own secret, not the server's: the signature.
    foreign = JwtTokenService.from_settings(load_settings({}, jwt_secret="f" * 64))
    signed = worker(url, foreign.mint_api_token("w", frozenset({"worker"}), ttl_s=60))
    assert "signed with another secret" in signed.stderr and "scope this worker" not in signed.stderr

    # Expired: mint a new one, whichever way it came to expire (idle past --ttl, or past renewals).
    now = int(time.time())
    claims = {
        "sub": "tests",
        "aud": "urn:stateport:api",
        "scope": "worker",
        "iat": now - 7200,
        "exp": now - 3600,
    }
    expired = worker(url, jwt.encode(claims, REST_SECRET, algorithm="HS512"))
    assert "the token has expired (give the new one a longer --ttl" in expired.stderr, expired.stderr
    # Said once (an outsider's find: "mint a new one" came twice in one line).
    assert expired.stderr.count("mint a new one") == 1, expired.stderr
    assert "STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS" in expired.stderr

    # A valid token without the scopes: the only case for a scope hint.
    no_worker = worker(url, stateport_server.api_token("runs:read"))
    assert no_worker.returncode == 1
    assert no_worker.stderr.strip().splitlines()[-1] == (
        "  the worker needs a token with the scope worker: stateport token api --scope 'worker'"
    )
    no_dags = worker(url, stateport_server.api_token("worker"), "--register")
    assert no_dags.returncode == 1
    assert "lacks the 'dags:write' scope" in no_dags.stderr
    assert no_dags.stderr.strip().splitlines()[-1] == (
        "  the worker needs a token with the scopes worker and dags:write (for --register): "
        "stateport token api --scope 'worker dags:write'"
    )


def test_a_registering_worker_waits_for_its_server_and_says_where_it_tried(tmp_path: Path) -> None:
    """A worker started with --register before its server (side by side, or during a restart) waits for
    it with backoff, as its claims do, rather than exiting (an outsider's find: the README's own command
    died); its first warning says where it tried in a user's words, not aiohttp's ("ssl:default", an
    earlier probe's find); once the server is up it registers and works."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    token = JwtTokenService.from_settings(load_settings({}, jwt_secret=REST_SECRET)).mint_api_token(
        "workers", frozenset({"worker", "dags:write", "runs:write", "runs:read"}), ttl_s=600
    )
    command = [
        str(STATEPORT),
        "worker",
        "examples.hello",
        "--app-dir",
        str(REPO),
        "--url",
        url,
        "--token",
        token,
    ]
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen([*command, "--register"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "retrying in" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, log.read_text()
        first = next(line for line in log.read_text().splitlines() if "retrying in" in line)
        assert f"cannot reach the server at 127.0.0.1:{port} (connection refused)" in first, first
        # On the same line, readable: a line break in it was escaped to a literal "\n" (an outsider's find).
        assert "(connection refused): is a server running there?" in first, first
        assert "\\n" not in first, first
        with run_logged_server(tmp_path / "data", None, port=port) as server:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                while http.get("/api/v2/dags/hello").status_code == 404 and time.monotonic() < deadline + 30:
                    time.sleep(0.2)
                answer = http.post(
                    "/api/v2/dags/hello/dagRuns", json={"logical_date": None}, headers={"Prefer": "wait=20"}
                )
            assert answer.status_code == 200, answer.text
            assert answer.json()["state"] == "success"
            assert server.pid is not None
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()


def test_configuration_errors_are_one_clear_line(tmp_path: Path) -> None:
    env_bad = cli(tmp_path, "--database-url", "mysql://x", "migrate", check=False)
    assert env_bad.returncode == 2
    assert "STATEPORT_DATABASE_URL" in env_bad.stderr and "Traceback" not in env_bad.stderr


async def test_a_database_that_will_not_write_is_said_to_be_so_not_unreachable(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: on a full disk `migrate` said "database or disk is full", then asked whether the
    # database was running and reachable. A standby (every transaction read-only) is the same case.
    name = fresh_postgres_url.rsplit("/", 1)[1]
    await admin_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    for command in (("migrate",), ("serve", "--port", "0")):
        done = await asyncio.to_thread(
            cli, tmp_path, "--database-url", fresh_postgres_url, *command, check=False
        )
        assert done.returncode == 1, done.stderr
        assert "the database will not write: " in done.stderr and "read-only" in done.stderr, done.stderr
        assert "free space" in done.stderr and "reachable" not in done.stderr, done.stderr


async def test_serve_on_a_migrated_database_that_turned_read_only_is_refused_in_one_line(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # An outsider's find: on a hot standby of a migrated database (the migration has nothing to write)
    # serve printed its banner, then failed in its lifespan with a 90-line traceback (LISTEN in recovery).
    await asyncio.to_thread(cli, tmp_path, "--database-url", fresh_postgres_url, "migrate")
    name = fresh_postgres_url.rsplit("/", 1)[1]
    await admin_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    done = await asyncio.to_thread(
        cli, tmp_path, "--database-url", fresh_postgres_url, "serve", "--port", "0", check=False
    )
    assert done.returncode == 1, done.stderr
    assert "the database is read-only" in done.stderr and "a standby rather than the primary" in done.stderr
    assert "Traceback" not in done.stderr and "Stateport serving" not in done.stdout, done.stdout


async def test_libpq_connection_options_in_the_url_are_taken(fresh_postgres_url: str, tmp_path: Path) -> None:
    # An outsider's find: ?sslmode=require (how one asks for TLS to PostgreSQL) ended `migrate` and `serve`
    # with a traceback: the migrations handed the URL's query to the driver as arguments. asyncpg reads it
    # whole now, as the servers' pool always did.
    done = await asyncio.to_thread(
        cli, tmp_path, "--database-url", f"{fresh_postgres_url}?sslmode=disable", "migrate"
    )
    assert "migrated" in done.stdout
    tls = await asyncio.to_thread(
        cli, tmp_path, "--database-url", f"{fresh_postgres_url}?sslmode=require", "migrate", check=False
    )
    # This machine's PostgreSQL may or may not offer TLS: either way, one line.
    assert tls.returncode == 0 or (tls.returncode == 1 and "SSL" in tls.stderr), tls.stderr
    assert "Traceback" not in tls.stderr
    bogus = await asyncio.to_thread(
        cli, tmp_path, "--database-url", f"{fresh_postgres_url}?bogus=1", "migrate", check=False
    )
    assert bogus.returncode == 1 and 'unrecognized configuration parameter "bogus"' in bogus.stderr, (
        bogus.stderr
    )
    assert "Traceback" not in bogus.stderr
    # The URL's to mend, not the database's reach (an outsider's find: "is it running and reachable?").
    assert "STATEPORT_DATABASE_URL's query names it" in bogus.stderr and "reachable" not in bogus.stderr
    # A database not made yet: said as the servers' pool says it, with what to do (it named SQLAlchemy's
    # exception class and no remedy: an outsider's find).
    missing = await asyncio.to_thread(
        cli, tmp_path, "--database-url", f"{fresh_postgres_url}_none", "migrate", check=False
    )
    assert missing.returncode == 1 and "does not exist: create it first" in missing.stderr, missing.stderr
    assert "sqlalchemy" not in missing.stderr


def test_a_sqlite_database_that_will_not_write_is_said_to_be_so(tmp_path: Path) -> None:
    # SQLite says "database or disk is full" and "attempt to write a readonly database"; a full disk cannot
    # be made here, a read-only connection can (a root process writes any file whatever its mode).
    path = tmp_path / "ro.db"
    sqlite3.connect(path).close()
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as refused:
            readonly.execute("CREATE TABLE t (x)")
    finally:
        readonly.close()
    error = translate(refused.value)
    assert isinstance(error, Unwritable), error
    assert error.detail == "the database will not write: attempt to write a readonly database"


@pytest.mark.parametrize(
    ("backend", "names"),
    [
        (
            {"STATEPORT_STATE_BACKEND": "redis"},
            "the Redis state store (STATEPORT_REDIS_URL): Redis is unreachable",
        ),
        ({"STATEPORT_EVENTS_BACKEND": "redis"}, "the Redis event bus (STATEPORT_REDIS_URL)"),
        (
            {"STATEPORT_STATE_BACKEND": "s3"},
            "the S3 state store (STATEPORT_S3_BUCKET, STATEPORT_S3_ENDPOINT_URL, STATEPORT_S3_REGION)",
        ),
        (
            {"STATEPORT_BLOB_BACKEND": "s3"},
            "the S3 blob store (STATEPORT_S3_BUCKET, STATEPORT_S3_ENDPOINT_URL, STATEPORT_S3_REGION)",
        ),
        ({"STATEPORT_BLOB_BACKEND": "s3", "bucket": "missing"}, "does not exist"),
        # An outsider's find: accepted, then every large result's report was a 404 and its try failed.
        ({"STATEPORT_BLOB_DIR": "/proc/stateport-blobs"}, "the blob directory '/proc/stateport-blobs'"),
    ],
)
def test_serve_with_a_store_down_says_so_in_one_line(
    tmp_path: Path, request: pytest.FixtureRequest, backend: dict[str, str], names: str
) -> None:
    # Each printed the traceback of a failed lifespan (80-150 lines, exit 3: outsiders' probes); only a
    # Redis state store that was down was one line.
    env = {
        **backend,
        "STATEPORT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "STATEPORT_DB_TIMEOUT_S": "1",
    }
    env |= {"STATEPORT_S3_BUCKET": "absent", "STATEPORT_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    if env.pop("bucket", None):  # a reachable S3 without the bucket
        env["STATEPORT_S3_ENDPOINT_URL"] = request.getfixturevalue("s3_endpoint")
    down = cli(tmp_path, "serve", "--port", str(free_port()), check=False, env_extra=env)
    assert down.returncode == 1 and "Traceback" not in down.stderr, down.stderr
    first, hint = down.stderr.strip().splitlines()
    assert first.startswith("stateport: Unavailable: ") and names in first, first
    assert first.count("blob directory") <= 1, first
    # A directory does not "run": its hint says what a directory needs (an outsider's find).
    if "STATEPORT_BLOB_DIR" in backend:
        assert "directory" in hint and "runs" not in hint, hint
    else:
        assert "reachable" in hint, hint
    # S3 is a service that does not "run": its hint names the bucket and the credentials (an outsider's).
    if "s3" in str(backend).lower():
        assert "the bucket exists" in hint and "AWS_ACCESS_KEY_ID" in hint and "runs" not in hint, hint


def test_serve_on_a_port_taken_says_so_before_any_banner(tmp_path: Path) -> None:
    # An outsider's find: the banner (its token commands too) came first, then uvicorn's bind error.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = cli(tmp_path, "serve", "--port", str(port), check=False)
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout == "" and "Traceback" not in refused.stderr, (refused.stdout, refused.stderr)
    first, hint = refused.stderr.strip().splitlines()
    assert first == f"stateport: cannot listen on 127.0.0.1:{port}: Address already in use", first
    assert "--port" in hint


def test_serve_refuses_a_redis_url_whose_database_is_not_a_number(tmp_path: Path) -> None:
    # An outsider's probe: redis-py reads /abc as no database, and the server started on database 0.
    env = {"STATEPORT_STATE_BACKEND": "redis", "STATEPORT_REDIS_URL": "redis://127.0.0.1:6379/abc"}
    refused = cli(tmp_path, "serve", "--port", str(free_port()), check=False, env_extra=env)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("stateport: configuration error: STATEPORT_REDIS_URL") and "'abc'" in line, line


def test_serve_refuses_several_processes_on_sqlite_and_says_what_to_use(tmp_path: Path) -> None:
    # Issue #12 item 9: it started without a word, and waits across its processes then took 6 to 45 s.
    refused = cli(tmp_path, "serve", "--workers", "2", "--port", "0", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    message = refused.stderr
    assert "2 server processes (--workers, STATEPORT_WORKERS or workers in" in message and "SQLite" in message
    assert (
        "--workers 1" in message
        and "postgresql://" in message
        and "STATEPORT_EVENTS_BACKEND=redis" in message
    )
    assert not (tmp_path / "stateport.db").exists()  # refused before anything was created


def test_several_processes_are_allowed_where_waits_stay_prompt() -> None:
    # PostgreSQL (LISTEN/NOTIFY) or a shared Redis bus wake waiters in every process; one process on
    # SQLite needs no bus.
    check_serving(load_settings({}, workers=4, database_url="postgresql://u@h/db"))
    check_serving(load_settings({}, workers=4, events_backend="redis"))
    check_serving(load_settings({}, workers=1))
    with pytest.raises(ConfigError, match="SQLite"):
        check_serving(load_settings({}, workers=4, database_url="sqlite:///x.db"))
    with pytest.raises(
        ConfigError, match=r"EVENTS_BACKEND=memory.*Use STATEPORT_EVENTS_BACKEND=postgres"
    ) as refused:
        check_serving(load_settings({}, workers=4, events_backend="memory", database_url="postgresql://h/d"))
    assert "SQLite" not in str(refused.value)


def banner_commands(
    tmp_path: Path, serve_env: dict[str, str], launcher: tuple[str, ...] = (str(STATEPORT),)
) -> dict[str, str]:
    """The token commands ``stateport serve`` prints ({"API token": ..., "TI token": ...}), read from the
    banner of a server started (by ``launcher``) with ``serve_env`` alone, then stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")} | serve_env
    server = subprocess.Popen(
        [*launcher, "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    commands: dict[str, str] = {}
    try:
        assert server.stdout is not None
        for line in server.stdout:
            name, _, command = line.strip().partition(": ")
            if name in ("API token", "TI token"):
                commands[name] = command
            if name == "TI token":
                break
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    return commands


def run_copied(
    command: str, tmp_path: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command pasted into another shell: no STATEPORT_ variable of the server's, another home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env |= {"HOME": str(tmp_path / "elsewhere"), **(env_extra or {})}
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_the_banners_token_commands_mint_tokens_the_server_accepts(tmp_path: Path) -> None:
    data = tmp_path / "custom data"
    commands = banner_commands(tmp_path, {"STATEPORT_DATA_DIR": str(data)})
    ti = uuid.uuid4()
    api_token = run_copied(commands["API token"], tmp_path).stdout.strip()
    ti_token = run_copied(
        commands["TI token"].replace("<task-instance-id>", str(ti)), tmp_path
    ).stdout.strip()
    server_keys = JwtTokenService.from_settings(load_settings({}, data_dir=str(data)))
    assert server_keys.verify_api_token(api_token).scopes == {
        "dags:write",
        "runs:write",
        "runs:read",
        "state:admin",
        "worker",
    }
    assert server_keys.verify_task_token(ti_token).subject == str(ti)
    assert not (tmp_path / "elsewhere").exists()  # no secret of another data directory was made

    # A secret the server took from its environment is not printed: the command asks for it.
    secret = "s" * 64
    commands = banner_commands(tmp_path, {"STATEPORT_DATA_DIR": str(data), "STATEPORT_JWT_SECRET": secret})
    assert secret not in commands["API token"]
    refused = run_copied(commands["API token"], tmp_path)
    assert refused.returncode != 0 and "STATEPORT_JWT_SECRET" in refused.stderr and refused.stdout == ""
    given = run_copied(commands["API token"], tmp_path, {"STATEPORT_JWT_SECRET": secret}).stdout.strip()
    subject = (
        JwtTokenService.from_settings(load_settings({}, jwt_secret=secret)).verify_api_token(given).subject
    )
    # A subject of its own: tokens minted apart are callers apart (STATEPORT_MAX_WAITERS_PER_CALLER).
    again = run_copied(commands["API token"], tmp_path, {"STATEPORT_JWT_SECRET": secret}).stdout.strip()
    other = (
        JwtTokenService.from_settings(load_settings({}, jwt_secret=secret)).verify_api_token(again).subject
    )
    assert subject.startswith("cli-") and other.startswith("cli-") and subject != other


def test_a_server_started_as_a_module_prints_token_commands_a_shell_can_run(tmp_path: Path) -> None:
    # ``python -m stateport.cli serve`` from a virtual environment that is not activated: no ``stateport``
    # on PATH, and sys.argv[0] is the package's __main__.py, which a shell cannot run.
    data = tmp_path / "data"
    path = os.pathsep.join(
        part
        for part in os.environ.get("PATH", "").split(os.pathsep)
        if not (Path(part) / "stateport").exists()
    )
    commands = banner_commands(
        tmp_path, {"STATEPORT_DATA_DIR": str(data), "PATH": path}, (sys.executable, "-m", "stateport.cli")
    )
    api = commands["API token"]
    assert "__main__.py" not in api and " -m stateport.cli token api" in api
    minted = run_copied(api, tmp_path, {"PATH": path})
    assert minted.returncode == 0, minted.stderr
    server_keys = JwtTokenService.from_settings(load_settings({}, data_dir=str(data)))
    assert "worker" in server_keys.verify_api_token(minted.stdout.strip()).scopes


def test_the_banners_token_command_mints_with_the_servers_token_lifetime(tmp_path: Path) -> None:
    # An outsider's find: with STATEPORT_JWT_EXPIRATION_S=120 the copied command minted 600 s tokens.
    data = tmp_path / "data"
    commands = banner_commands(
        tmp_path, {"STATEPORT_DATA_DIR": str(data), "STATEPORT_JWT_EXPIRATION_S": "120"}
    )
    assert "STATEPORT_JWT_EXPIRATION_S=120" in commands["TI token"]
    ti_token = run_copied(commands["TI token"].replace("<task-instance-id>", str(uuid.uuid4())), tmp_path)
    claims = JwtTokenService.from_settings(load_settings({}, data_dir=str(data))).verify_task_token(
        ti_token.stdout.strip()
    )
    assert (claims.expires_at - claims.issued_at).total_seconds() == 120


def test_the_banners_token_command_reads_the_servers_config_file(tmp_path: Path) -> None:
    # An outsider's find: with the secret in STATEPORT_CONFIG_FILE the banner asked for it from the
    # environment (the copied command stopped there), and left out a shorter API token lifetime.
    data, secret = tmp_path / "data", "f" * 64
    config = tmp_path / "stateport.toml"
    config.write_text(
        f'jwt_secret = "{secret}"\njwt_issuer = "urn:example"\napi_token_max_lifetime_days = 2\n'
    )
    commands = banner_commands(
        tmp_path, {"STATEPORT_DATA_DIR": str(data), "STATEPORT_CONFIG_FILE": str(config)}
    )
    api = commands["API token"]
    assert secret not in api and "STATEPORT_JWT_SECRET" not in api, api
    assert f"STATEPORT_CONFIG_FILE={config}" in api and "STATEPORT_API_TOKEN_MAX_LIFETIME_DAYS=2" in api, api
    minted = run_copied(api, tmp_path)
    assert minted.returncode == 0, minted.stderr
    assert "up to 2 days" in minted.stderr, minted.stderr
    keys = JwtTokenService.from_settings(load_settings({"STATEPORT_CONFIG_FILE": str(config)}))
    assert "worker" in keys.verify_api_token(minted.stdout.strip()).scopes


def test_state_commands_take_the_run_id_spelling_the_docs_name(tmp_path: Path) -> None:
    # configuration.md names --run-id among the accepted spellings; it was "unrecognized arguments".
    got = cli(tmp_path, "state", "get", "--dag-id", "d", "--run-id", "r", "--task-id", "t", "k", check=False)
    assert "unrecognized arguments" not in got.stderr, got.stderr


def test_a_second_server_of_one_sqlite_database_is_refused(tmp_path: Path) -> None:
    # An outsider's find: two `serve` on one data directory were accepted, and each one's waiters heard
    # of the other's runs 15-23 s late (they share no events, as --workers 2 on SQLite, refused, would).
    data = tmp_path / "data"
    with run_server(data):
        second = cli(tmp_path, "--data-dir", str(data), "serve", "--port", str(free_port()), check=False)
    assert second.returncode == 1, second.stderr
    assert "another stateport serve already serves the SQLite database" in second.stderr
    assert "Traceback" not in second.stderr


def test_serve_with_a_missing_key_file_says_so_before_any_banner(tmp_path: Path) -> None:
    # An outsider's find: the banner (its token commands naming the key) came first, then the error, exit 0.
    env = {"STATEPORT_JWT_ALGORITHM": "RS256", "STATEPORT_JWT_PRIVATE_KEY_PATH": str(tmp_path / "absent.pem")}
    refused = cli(tmp_path, "serve", "--port", str(free_port()), check=False, env_extra=env)
    assert refused.returncode == 2 and refused.stdout == "", (refused.stdout, refused.stderr)
    assert "STATEPORT_JWT_PRIVATE_KEY_PATH" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "args", [("serve", "--port", "0"), ("token", "api"), ("dags", "register", "hello", "-")], ids=str
)
def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    # An outsider's find: a traceback ending in FileNotFoundError. /proc takes no new directory, root or not.
    done = cli(Path("/proc/1/stateport-data"), *args, stdin=json.dumps(SPEC), check=False)
    assert done.returncode in (1, 2), done
    assert "Traceback" not in done.stderr, done.stderr
    assert "/proc/1/stateport-data" in done.stderr and "No such file or directory" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("examples.hello", "--queues", " , "), "--queues names no queue"),
        (("examples.hello", "--url", "not-a-url"), "must be the server's http:// or https:// address"),
        (
            ("examples.hello", "--url", "ftp://127.0.0.1:1"),
            "must be the server's http:// or https:// address",
        ),
        (("examples.hello:nope",), "examples.hello has no 'nope'"),
        (("examples.hello", "--url", "http://127.0.0.1:99999"), "must be the server's http:// or https://"),
        ((":x",), "name a module: MODULE[:ATTR]"),
    ],
    ids=["no-queue", "no-scheme", "ftp", "no-attribute", "port-out-of-range", "no-module"],
)
def test_a_worker_given_bad_arguments_says_so_at_once(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    # An outsider's find: tracebacks (no queue, no such attribute), or a worker retrying for ever with
    # "UnsupportedProtocol" (a URL with no http scheme).
    done = cli(
        tmp_path,
        "worker",
        "--app-dir",
        str(REPO),
        "--token",
        "t",
        *(() if "--url" in args else ("--url", "http://127.0.0.1:1")),
        *args,
        check=False,
    )
    assert done.returncode == 2, done  # a usage error, as argparse says one
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("not-a-host.invalid", "must be an address or host name of this machine"),
        ("999.1.1.1", "must be an address or host name of this machine"),
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),  # TEST-NET-1: never assigned
        ("", "STATEPORT_HOST (or --host): an address or host name of this machine"),  # every interface
    ],
)
def test_a_host_that_cannot_be_listened_on_is_told_apart_from_a_port_in_use(
    tmp_path: Path, host: str, said: str
) -> None:
    # An outsider's find: every such host was told "another server (another Stateport?) listens there".
    done = cli(tmp_path, "serve", "--host", host, "--port", str(free_port()), check=False)
    assert done.returncode == (3 if host else 2), done
    assert said in done.stderr and "another server" not in done.stderr, done.stderr


@pytest.mark.parametrize(("host", "in_url"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_serve_on_port_0_names_the_port_it_picked(tmp_path: Path, host: str, in_url: str) -> None:
    # Outsiders' finds: the banner said http://127.0.0.1:0, its API docs and console links too, and the
    # port was only in uvicorn's own log line; an IPv6 host was refused ("could not be resolved").
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env["STATEPORT_DATA_DIR"] = str(tmp_path)
    process = subprocess.Popen(
        [str(STATEPORT), "serve", "--host", host, "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"Stateport serving on http://{in_url}:"), first
        port = int(first.split(f"http://{in_url}:", 1)[1].split()[0])
        assert port > 0
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://{in_url}:{port}/health/live").status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None, "it never listened there"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_refuses_a_sqlite_database_it_cannot_write_in_one_line_naming_it() -> None:
    # An outsider's find: a database left root-owned by a `migrate` run as root started a server (as
    # another user) that said ready and answered every write 503 "attempt to write a readonly database".
    require(os.geteuid() == 0, "root, to serve as another user (nobody)")
    home = Path(tempfile.mkdtemp(prefix="unwritable-", dir="/tmp"))
    try:
        home.chmod(0o755)
        data = home / "data"
        secret = {"STATEPORT_JWT_SECRET": "s" * 64}
        cli(data, "migrate", env_extra=secret)  # as root: the database file is root's, 0644
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)  # the server's own directory, as the operator meant
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
        env.update(secret, STATEPORT_DATA_DIR=str(data), HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run(
            [str(STATEPORT), "serve", "--port", str(free_port())],
            env=env,
            user="nobody",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done
        assert "Stateport serving" not in done.stdout and "Traceback" not in done.stderr, done
        said = done.stderr
        assert f"{data / 'stateport.db'} cannot be written by this process (user nobody)" in said, said
        assert "its owner is root and its mode -rw-r--r--" in said, said
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_secret_that_cannot_be_written_whole_is_not_left_behind_empty(tmp_path: Path) -> None:
    # An outsider's find: on a full disk `serve` left a 0-byte jwt_secret, which every later start refused
    # ("is empty: delete it"). Here no file may grow (RLIMIT_FSIZE 0), as no disk space would let it.
    def no_file_may_grow() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as ENOSPC would
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEPORT_")}
    env.update(STATEPORT_DATA_DIR=str(tmp_path / "data"), PYTHONDONTWRITEBYTECODE="1")
    full = subprocess.run(
        [str(STATEPORT), "token", "api", "--scope", "runs:read"],
        env=env,
        preexec_fn=no_file_may_grow,  # the child's limits only
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert full.returncode != 0 and "Traceback" not in full.stderr, full
    assert "cannot keep the JWT secret" in full.stderr and "File too large" in full.stderr, full.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [], "nothing half-written is left"
    # Once files may grow again, the secret is made whole, and kept.
    made = cli(tmp_path / "data", "token", "api", "--scope", "runs:read")
    assert made.stdout.strip().count(".") == 2
    assert len((tmp_path / "data" / "jwt_secret").read_text()) >= 64


def test_serve_refuses_a_metrics_directory_holding_other_files_and_deletes_none(tmp_path: Path) -> None:
    # An outsider's find: PROMETHEUS_MULTIPROC_DIR naming the data directory had serve empty it of every
    # *.db, the SQLite database included (acknowledged state lost), then crash on a scrape.
    data = tmp_path / "data"
    cli(data, "migrate")
    database = data / "stateport.db"
    assert database.exists()
    kept = database.read_bytes()
    metrics = data / "counter_123.db"  # an earlier run's metrics file
    metrics.write_bytes(b"")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(data), "STATEPORT_PORT": "0"}
    done = cli(data, "serve", check=False, env_extra=env)
    assert done.returncode == 2, done.stderr
    assert f"PROMETHEUS_MULTIPROC_DIR={data} is where the database is kept" in done.stderr
    assert "Traceback" not in done.stderr
    assert database.read_bytes() == kept and metrics.exists()


def test_serve_refuses_the_data_directory_as_its_metrics_directory_before_the_database_is_made(
    tmp_path: Path,
) -> None:
    # An outsider's re-check: a new data directory named as PROMETHEUS_MULTIPROC_DIR held no database yet,
    # so serve made it there, and every server process then crashed reading it as metrics.
    data = tmp_path / "fresh"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(data), "STATEPORT_PORT": "0"}
    done = cli(data, "serve", check=False, env_extra=env)
    assert done.returncode == 2, done.stderr
    assert f"PROMETHEUS_MULTIPROC_DIR={data} is where the database is kept" in done.stderr
    assert not (data / "stateport.db").exists()


def test_serve_empties_a_metrics_directory_of_its_own_earlier_files(tmp_path: Path) -> None:
    # An outsider's re-check: the check refused the server's own HTTP metrics files (counter_http_<pid>.db),
    # so a server given its own directory could not start again.
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", ""])  # a pid no process has now
    ended.wait()
    gone = ended.pid
    earlier = [f"counter_http_{gone}.db", f"histogram_http_{gone}.db", f"gauge_livesum_{gone}.db"]
    for name in [*earlier, f"counter_{gone}.db"]:
        (metrics / name).write_bytes(b"")
    assert prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(metrics)}) == str(metrics)
    assert [p.name for p in metrics.iterdir()] == [LOCK_NAME]  # the server's hold on it
    # Another *.db (a database kept there) is refused, and kept: one named like a metrics file too (an
    # outsider's find: orders_2024.db was deleted).
    for database in ("stateport.db", "orders_2024.db"):
        (metrics / database).write_bytes(b"data")
        with pytest.raises(ConfigError, match=rf"not prometheus_client's metrics .{database}."):
            prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        assert (metrics / database).read_bytes() == b"data"
        (metrics / database).unlink()
    # A database named like a metrics file is kept too (another outsider's find: summary_2024.db).
    kept = metrics / "summary_2024.db"
    sqlite3.connect(kept).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ConfigError, match=r"not prometheus_client's metrics .summary_2024.db."):
        prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    assert kept.exists()
    kept.unlink()
    # Not a regular file: a directory named like one, or a link (its target would be emptied).
    (metrics / "counter_7.db").mkdir()
    with pytest.raises(ConfigError, match=r"not prometheus_client's metrics .counter_7.db."):
        prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    (metrics / "counter_7.db").rmdir()
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"keep")
    (metrics / "counter_8.db").symlink_to(target)
    with pytest.raises(ConfigError, match=r"not prometheus_client's metrics .counter_8.db."):
        prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    assert target.read_bytes() == b"keep"
    (metrics / "counter_8.db").unlink()
    # A lock file that is a link is not followed (a dangling one made its target).
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / LOCK_NAME).symlink_to(tmp_path / "made-by-the-lock")
    with pytest.raises(ConfigError, match="cannot use it as a directory"):
        prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(linked)})
    assert not (tmp_path / "made-by-the-lock").exists()
    # A directory another running server holds is refused, its files kept (an outsider's find: they were
    # deleted, and the running server's counters went from its scrapes). Held by a lock, not named by the
    # files' pids: a stale file's pid is soon another process's (pid 1 in a container).
    other = tmp_path / "other"
    other.mkdir()
    running = other / f"counter_http_{os.getpid()}.db"
    running.write_bytes(b"counts")
    (other / "counter_1.db").write_bytes(b"")  # an earlier start's, pid 1 (alive): emptied all the same
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(other / LOCK_NAME)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="the metrics directory of another running server"):
            prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(other)})
        assert running.read_bytes() == b"counts"
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert prepare_multiprocess({"PROMETHEUS_MULTIPROC_DIR": str(other)}) == str(other)
    assert sorted(p.name for p in other.iterdir()) == [LOCK_NAME]


# A process holding a metrics directory's lock, as a running server does, until it is killed.
LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""
