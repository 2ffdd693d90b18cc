"""The official Airflow REST client (apache-airflow-client 3.3.2) on DAGs, DAG runs and task instances.

A real server per backend (``airflow_server``: SQLite and PostgreSQL), the client in its own environment
(tests/e2e/airflow_client_driver.py), and runs moved on by a worker over the worker REST routes (claim,
report), as a real worker does. Every call must parse into the client's own models; the assertions are on
the parsed fields.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.test_airflow_client import drive, trigger_body
from tests.fixtures.rest import Server
from tests.services import unique

SCOPES = ("dags:write", "runs:write", "runs:read", "state:admin")


def mapped_spec(queue: str) -> dict[str, Any]:
    """extract (2 retries) -> split -> each (one per item of split's list) -> answer (the result task)."""
    return {
        "tasks": [
            {"task_id": "extract", "retries": 2, "queue": queue},
            {"task_id": "split", "upstream": ["extract"], "queue": queue},
            {"task_id": "each", "upstream": ["split"], "expand": "split", "queue": queue},
            {"task_id": "answer", "upstream": ["each"], "queue": queue},
        ],
        "result_task": "answer",
    }


@dataclass
class Dag:
    server: Server
    dag_id: str
    queue: str

    def http(self) -> httpx.Client:
        token = self.server.api_token(*SCOPES, "worker")
        return httpx.Client(
            base_url=self.server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def trigger(self, run_id: str, **body: Any) -> dict[str, Any]:
        with self.http() as http:
            got = http.post(
                f"/api/v2/dags/{self.dag_id}/dagRuns",
                json={"logical_date": None, "dag_run_id": run_id, **body},
            )
        assert got.status_code == 200, got.text
        answer: dict[str, Any] = got.json()
        return answer

    def work(self, results: dict[str, Any], count: int, wait_s: float = 5) -> list[dict[str, Any]]:
        """Claim ``count`` task instances of the DAG's queue one by one and report each a success with
        ``results[task_id]`` as its result; the claimed task instances, in order."""
        done: list[dict[str, Any]] = []
        with self.http() as http:
            while len(done) < count:
                claim = {"worker_id": "w1", "queues": [self.queue], "max_tasks": 1, "wait_s": wait_s}
                got = http.post("/execution/workers/claim", json=claim)
                assert got.status_code == 200, got.text
                claimed = got.json()["task_instances"]
                assert claimed, f"nothing to claim after {len(done)} of {count}"
                (ti,) = claimed
                report = http.patch(
                    f"/execution/task-instances/{ti['id']}/state",
                    json={"state": "success", "result": results.get(ti["task_id"])},
                    headers={"Authorization": f"Bearer {ti['token']}"},
                )
                assert report.status_code == 204, report.text
                done.append(ti)
        return done


@pytest.fixture
def dag(airflow_server: Server) -> Dag:
    made = Dag(airflow_server, unique("afruns"), unique("q"))
    with made.http() as http:
        assert http.put(f"/api/v2/dags/{made.dag_id}", json=mapped_spec(made.queue)).status_code == 200
    return made


def run_call(method: str, **kwargs: Any) -> dict[str, Any]:
    return {"api": "DagRunApi", "method": method, "kwargs": kwargs}


def ti_call(method: str, **kwargs: Any) -> dict[str, Any]:
    return {"api": "TaskInstanceApi", "method": method, "kwargs": kwargs}


def ok(result: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    assert result["ok"], result
    if model is not None:
        assert result["type"] == model, result
    data: dict[str, Any] = result["data"]
    return data


def assert_run(data: dict[str, Any], dag_id: str, *, version: int = 1) -> None:
    """What every run answer holds, as Airflow means it."""
    assert data["dag_id"] == dag_id and data["dag_display_name"] == dag_id
    assert data["run_type"] == "manual"
    assert data["logical_date"] is None and data["queued_at"] is not None and data["run_after"] is not None
    [dag_version] = data["dag_versions"]
    assert dag_version["version_number"] == version and dag_version["dag_id"] == dag_id
    assert dag_version["dag_display_name"] == dag_id and dag_version["created_at"] is not None


def test_the_wait_stream_is_read_without_preload_content(dag: Dag) -> None:
    # docs/api.md listed wait_dag_run_until_finished as working: the client cannot read the NDJSON that
    # Airflow's own spec declares for it, and raises before looking at the lines.
    run_id = unique("waited")
    dag.trigger(run_id)
    with dag.http() as http:
        assert http.post(f"/api/v2/dags/{dag.dag_id}/dagRuns/{run_id}/cancel").status_code == 200
    wait = {"dag_id": dag.dag_id, "dag_run_id": run_id, "interval": 1}
    calls = [
        {"api": "DagRunApi", "method": "wait_dag_run_until_finished", "kwargs": wait},
        {"api": "DagRunApi", "method": "wait_dag_run_until_finished_without_preload_content", "kwargs": wait},
    ]
    plain, raw = drive(dag.server, calls)
    assert not plain["ok"] and plain["error"] == "ApiException", plain
    # The server answered (200, its NDJSON); the client raised ApiException (0) "Unsupported content type".
    assert plain["status"] == 200 and plain["headers"]["content-type"] == "application/x-ndjson", plain
    assert raw["ok"] and raw["status"] == 200, raw
    assert raw["data"]["body"] == '{"state":"failed","reason":"cancelled"}\n'


@pytest.mark.slow
def test_trigger_read_list_patch_and_delete_runs(dag: Dag) -> None:
    dag_id = dag.dag_id
    first, second, third = unique("r1"), unique("r2"), unique("r3")
    key = unique("idem")
    body = trigger_body(dag_run_id=first, conf={"a": 1}, run_after="2031-01-01T00:00:00+00:00")
    out = drive(
        dag.server,
        [
            run_call("trigger_dag_run", dag_id=dag_id, trigger_dag_run_post_body=body),
            run_call(
                "trigger_dag_run",
                dag_id=dag_id,
                trigger_dag_run_post_body=trigger_body(
                    dag_run_id=second, run_after="2030-01-01T00:00:00+00:00", note="from the client"
                ),
            ),
            {
                **run_call(
                    "trigger_dag_run",
                    dag_id=dag_id,
                    trigger_dag_run_post_body=trigger_body(
                        dag_run_id=third, run_after="2032-01-01T00:00:00+00:00"
                    ),
                ),
                "headers": {"Idempotency-Key": key},
            },
            {
                **run_call(
                    "trigger_dag_run",
                    dag_id=dag_id,
                    trigger_dag_run_post_body=trigger_body(
                        dag_run_id=third, run_after="2032-01-01T00:00:00+00:00"
                    ),
                ),
                "headers": {"Idempotency-Key": key},
            },
            run_call("get_dag_run", dag_id=dag_id, dag_run_id=first),
            run_call("get_dag_runs", dag_id=dag_id, order_by=["run_after"]),
            run_call("get_dag_runs", dag_id=dag_id, order_by=["-run_after"], limit=2, offset=0),
            run_call("get_dag_runs", dag_id=dag_id, order_by=["-run_after"], limit=2, offset=2),
            run_call(
                "patch_dag_run",
                dag_id=dag_id,
                dag_run_id=first,
                dag_run_patch_body={"$model": "DAGRunPatchBody", "value": {"state": "failed"}},
            ),
            run_call("get_dag_runs", dag_id=dag_id, state=["failed"]),
            run_call(
                "patch_dag_run",
                dag_id=dag_id,
                dag_run_id=second,
                dag_run_patch_body={"$model": "DAGRunPatchBody", "value": {"note": "patched note"}},
            ),
            run_call("delete_dag_run", dag_id=dag_id, dag_run_id=first),
            run_call("get_dag_run", dag_id=dag_id, dag_run_id=first),
            run_call("get_dag_runs", dag_id="~", run_id_pattern=second, limit=100),
            run_call("get_dag_runs", dag_id=dag_id, order_by=["bogus"]),
        ],
    )
    (
        triggered,
        plain,
        keyed,
        again,
        read,
        ascending,
        page_one,
        page_two,
        patched,
        failed,
        note,
        deleted,
        gone,
        everywhere,
        bad_order,
    ) = out
    data = ok(triggered, "DAGRunResponse")
    assert_run(data, dag_id)
    assert (data["dag_run_id"], data["state"], data["conf"]) == (first, "queued", {"a": 1})
    assert data["run_after"].startswith("2031-01-01T00:00:00")
    assert (data["start_date"], data["end_date"], data["duration"], data["note"]) == (None, None, None, None)
    assert (ok(plain, "DAGRunResponse")["dag_run_id"], ok(plain)["note"]) == (second, "from the client")
    assert ok(keyed)["dag_run_id"] == ok(again, "DAGRunResponse")["dag_run_id"] == third
    assert ok(read, "DAGRunResponse") == data
    listed = ok(ascending, "DAGRunCollectionResponse")
    assert [run["dag_run_id"] for run in listed["dag_runs"]] == [second, first, third]
    assert listed["total_entries"] == 3
    for run in listed["dag_runs"]:
        assert_run(run, dag_id)
    pages = [ok(page_one)["dag_runs"], ok(page_two)["dag_runs"]]
    assert [[run["dag_run_id"] for run in page] for page in pages] == [[third, first], [second]]
    assert ok(page_one)["total_entries"] == 3
    cancelled = ok(patched, "DAGRunResponse")
    assert (cancelled["dag_run_id"], cancelled["state"]) == (first, "failed")
    assert cancelled["end_date"] is not None
    assert [run["dag_run_id"] for run in ok(failed)["dag_runs"]] == [first]
    noted = ok(note, "DAGRunResponse")
    assert (noted["dag_run_id"], noted["note"], noted["state"]) == (second, "patched note", "queued")
    assert (deleted["ok"], deleted["status"], deleted["data"]) == (True, 204, None), deleted
    assert (gone["error"], gone["status"]) == ("NotFoundException", 404), gone
    assert [(run["dag_run_id"], run["note"]) for run in ok(everywhere)["dag_runs"]] == [
        (second, "patched note")
    ]
    assert (bad_order["error"], bad_order["status"]) == ("BadRequestException", 400), bad_order
    assert "bogus" in bad_order["data"]["detail"]


@pytest.mark.slow
def test_a_page_of_runs_streamed_in_parts(dag: Dag) -> None:
    # Confs of 60 KB: a page of 40 runs is more than the server reads at a time (STATEPORT_MAX_PAGE_BYTES,
    # 1 MiB), so it answers in parts, a chunked answer (stateport.http.streamed_pages), parsed as one.
    run_ids = [f"{unique('big')}_{i:02d}" for i in range(40)]
    conf = {"text": "x" * 60_000}
    triggers = [
        run_call(
            "trigger_dag_run",
            dag_id=dag.dag_id,
            trigger_dag_run_post_body=trigger_body(dag_run_id=r, conf=conf),
        )
        for r in run_ids
    ]
    out = drive(
        dag.server, [*triggers, run_call("get_dag_runs", dag_id=dag.dag_id, limit=100, order_by=["id"])]
    )
    assert all(r["ok"] for r in out[:40]), out[:40]
    listed = ok(out[40], "DAGRunCollectionResponse")
    assert listed["total_entries"] == 40
    assert [run["dag_run_id"] for run in listed["dag_runs"]] == run_ids
    assert all(run["conf"] == conf for run in listed["dag_runs"])
    assert_run(listed["dag_runs"][-1], dag.dag_id)


@pytest.mark.slow
def test_a_running_run_is_not_deleted_and_prefer_wait_answers_the_outcome(dag: Dag) -> None:
    dag_id = dag.dag_id
    running, waited, slow = unique("running"), unique("waited"), unique("slow")
    dag.trigger(running)
    dag.work({"extract": 1}, 1)  # extract done: the run is running
    # Another DAG, on its own queue, whose run a worker in the background finishes while the client waits
    # on it (Prefer: wait).
    fast = Dag(dag.server, unique("affast"), unique("q"))
    with fast.http() as http:
        assert http.put(f"/api/v2/dags/{fast.dag_id}", json=mapped_spec(fast.queue)).status_code == 200
    worker = threading.Thread(
        target=fast.work, args=({"extract": 1, "split": [1, 2], "each": 3, "answer": 42}, 5, 20)
    )
    worker.start()
    try:
        out = drive(
            dag.server,
            [
                run_call("delete_dag_run", dag_id=dag_id, dag_run_id=running),
                run_call("get_dag_run", dag_id=dag_id, dag_run_id=running),
                {
                    **run_call(
                        "trigger_dag_run",
                        dag_id=fast.dag_id,
                        trigger_dag_run_post_body=trigger_body(dag_run_id=waited),
                    ),
                    "headers": {"Prefer": "wait=60"},
                },
            ],
        )
    finally:
        worker.join(timeout=60)
    conflict, read, outcome = out
    assert (conflict["error"], conflict["status"]) == ("ConflictException", 409), conflict
    assert "running" in conflict["data"]["detail"]
    assert ok(read)["state"] == "running"
    data = ok(outcome, "DAGRunResponse")
    assert outcome["status"] == 200 and outcome["headers"]["preference-applied"] == "wait=60"
    assert_run(data, fast.dag_id)
    assert (data["dag_run_id"], data["state"]) == (waited, "success")
    # The client drops Stateport's extra fields; they are in the answer.
    with dag.http() as http:
        raw = http.get(f"/api/v2/dags/{fast.dag_id}/dagRuns/{waited}").json()
    assert raw["outcome"] == {"state": "success", "results": {"answer": 42}}
    # Prefer: wait that ends first: 202, which the client answers with None.
    [early] = drive(
        dag.server,
        [
            {
                **run_call(
                    "trigger_dag_run", dag_id=dag_id, trigger_dag_run_post_body=trigger_body(dag_run_id=slow)
                ),
                "headers": {"Prefer": "wait=1"},
            }
        ],
    )
    assert (early["ok"], early["status"], early["data"]) == (True, 202, None), early
    assert early["headers"]["location"].endswith(f"/dagRuns/{slow}/wait?interval=1")


@pytest.fixture
def mapped_run(dag: Dag) -> Iterator[str]:
    """A run with extract and split done (split returned [1, 2]: each has map indexes 0 and 1)."""
    run_id = unique("mapped")
    dag.trigger(run_id)
    dag.work({"extract": {"rows": 3}, "split": [1, 2]}, 2)
    yield run_id


@pytest.mark.slow
def test_task_instances_of_a_run_with_a_mapped_task(dag: Dag, mapped_run: str) -> None:
    dag_id, run_id = dag.dag_id, mapped_run
    where = {"dag_id": dag_id, "dag_run_id": run_id}
    out = drive(
        dag.server,
        [
            ti_call("get_task_instances", **where),
            ti_call("get_task_instances", **where, state=["success"]),
            ti_call("get_task_instances", **where, order_by=["-map_index"], limit=2),
            ti_call("get_task_instance", **where, task_id="extract"),
            ti_call("get_task_instance", **where, task_id="each"),
            ti_call("get_mapped_task_instance", **where, task_id="each", map_index=1),
            ti_call("get_mapped_task_instances", **where, task_id="each"),
            ti_call("get_mapped_task_instances", **where, task_id="each", order_by=["-map_index"]),
            ti_call("get_mapped_task_instances", **where, task_id="extract"),
            ti_call("get_mapped_task_instance", **where, task_id="each", map_index=7),
            ti_call("get_task_instances", **where, order_by=["bogus"]),
            # The operators' state routes share the prefix: they still route to themselves.
            {
                "api": "TaskStateStoreApi",
                "method": "list_task_state_store",
                "kwargs": {**where, "task_id": "each", "map_index": 1},
            },
        ],
    )
    (
        listed,
        succeeded,
        by_map_desc,
        extract,
        mapped_without_index,
        each_1,
        mapped,
        mapped_desc,
        not_mapped,
        no_such_index,
        bad_order,
        state_store,
    ) = out
    tis = ok(listed, "TaskInstanceCollectionResponse")
    assert tis["total_entries"] == 5
    assert sorted((ti["task_id"], ti["map_index"]) for ti in tis["task_instances"]) == [
        ("answer", -1),
        ("each", 0),
        ("each", 1),
        ("extract", -1),
        ("split", -1),
    ]
    by_task = {(ti["task_id"], ti["map_index"]): ti for ti in tis["task_instances"]}
    for ti in tis["task_instances"]:
        assert (ti["dag_id"], ti["dag_run_id"], ti["dag_display_name"]) == (dag_id, run_id, dag_id)
        assert ti["task_display_name"] == ti["task_id"]
        assert (ti["pool"], ti["pool_slots"], ti["executor_config"]) == ("default_pool", 1, "{}")
        assert ti["run_after"] is not None and ti["logical_date"] is None
        assert ti["dag_version"]["version_number"] == 1 and ti["queue"] == dag.queue
    assert by_task[("extract", -1)]["max_tries"] == 2 and by_task[("split", -1)]["max_tries"] == 0
    done = by_task[("extract", -1)]
    assert (done["state"], done["try_number"], done["hostname"]) == ("success", 1, "w1")
    assert done["start_date"] is not None and done["end_date"] is not None and done["duration"] >= 0
    assert by_task[("answer", -1)]["state"] == "scheduled"
    assert sorted(ti["task_id"] for ti in ok(succeeded)["task_instances"]) == ["extract", "split"]
    assert ok(succeeded)["total_entries"] == 2
    first_two = [(ti["task_id"], ti["map_index"]) for ti in ok(by_map_desc)["task_instances"]]
    assert first_two == [("each", 1), ("each", 0)] and ok(by_map_desc)["total_entries"] == 5
    assert ok(extract, "TaskInstanceResponse") == done
    assert (mapped_without_index["error"], mapped_without_index["status"]) == ("NotFoundException", 404)
    assert "map_index" in mapped_without_index["data"]["detail"]
    assert ok(each_1, "TaskInstanceResponse") == by_task[("each", 1)]
    assert [ti["map_index"] for ti in ok(mapped, "TaskInstanceCollectionResponse")["task_instances"]] == [
        0,
        1,
    ]
    assert [ti["map_index"] for ti in ok(mapped_desc)["task_instances"]] == [1, 0]
    assert (not_mapped["error"], not_mapped["status"]) == ("NotFoundException", 404), not_mapped
    assert (no_such_index["error"], no_such_index["status"]) == ("NotFoundException", 404), no_such_index
    assert (bad_order["error"], bad_order["status"]) == ("BadRequestException", 400), bad_order
    assert ok(state_store, "TaskStateStoreCollectionResponse")["total_entries"] == 0


@pytest.mark.slow
def test_dags_are_read_and_listed(dag: Dag) -> None:
    dag_id = dag.dag_id
    other = unique(dag_id + "_b")
    with dag.http() as http:
        assert http.put(f"/api/v2/dags/{other}", json=mapped_spec(dag.queue)).status_code == 200
        version = http.get(f"/api/v2/dags/{dag_id}").json()["version"]
    out = drive(
        dag.server,
        [
            {"api": "DAGApi", "method": "get_dag", "kwargs": {"dag_id": dag_id}},
            {"api": "DAGApi", "method": "get_dags", "kwargs": {"dag_id_pattern": dag_id}},
            {
                "api": "DAGApi",
                "method": "get_dags",
                "kwargs": {"dag_id_prefix_pattern": dag_id, "order_by": ["-dag_id"]},
            },
            {
                "api": "DAGApi",
                "method": "get_dags",
                "kwargs": {"dag_id_pattern": dag_id, "limit": 1, "offset": 1},
            },
            {"api": "DAGApi", "method": "get_dags", "kwargs": {"tags": ["x"]}},
            {"api": "DAGApi", "method": "get_dag_details", "kwargs": {"dag_id": dag_id}},
            {"api": "DAGApi", "method": "get_dag_details", "kwargs": {"dag_id": unique("nodag")}},
        ],
    )
    got, pattern, prefix_desc, paged, tagged, details, no_details = out
    data = ok(got, "DAGResponse")
    # Airflow's details: DAGResponse's fields, and a file's defaults (an outsider's find: it was a 404).
    detailed = ok(details, "DAGDetailsResponse")
    assert {k: v for k, v in detailed.items() if k in data} == data
    assert (detailed["catchup"], detailed["concurrency"], detailed["timezone"]) == (False, 16, "UTC")
    assert detailed["latest_dag_version"]["version_number"] == 1 and detailed["active_runs_count"] >= 0
    assert (no_details["error"], no_details["status"]) == ("NotFoundException", 404), no_details
    assert (data["dag_id"], data["dag_display_name"]) == (dag_id, dag_id)
    assert (data["is_paused"], data["is_stale"], data["has_import_errors"]) == (False, False, False)
    assert data["timetable_summary"] == "None" and data["allowed_run_types"] == ["manual"]
    assert (data["tags"], data["owners"], data["fileloc"]) == ([], [], "")
    assert data["max_active_tasks"] == 16 and data["max_active_runs"] is None
    dags = ok(pattern, "DAGCollectionResponse")
    assert [d["dag_id"] for d in dags["dags"]] == [dag_id, other] and dags["total_entries"] == 2
    assert dags["dags"][0] == data
    assert [d["dag_id"] for d in ok(prefix_desc)["dags"]] == [other, dag_id]
    assert [d["dag_id"] for d in ok(paged)["dags"]] == [other] and ok(paged)["total_entries"] == 2
    assert (tagged["error"], tagged["status"]) == ("BadRequestException", 400), tagged
    # get_dags documents no 400 (its error model is not parsed): the detail is in the body.
    assert "tags" in tagged["body"]
    # Stateport's spec rides along (the client drops it).
    with dag.http() as http:
        raw = http.get(f"/api/v2/dags/{dag_id}").json()
    assert raw["version"] == version and [t["task_id"] for t in raw["tasks"]] == [
        "extract",
        "split",
        "each",
        "answer",
    ]


@pytest.mark.slow
def test_a_run_keeps_the_version_it_was_triggered_with(dag: Dag) -> None:
    old, new = unique("old"), unique("new")
    dag.trigger(old)
    changed = {**mapped_spec(dag.queue), "result_task": None}
    with dag.http() as http:
        assert http.put(f"/api/v2/dags/{dag.dag_id}", json=changed).status_code == 200
    dag.trigger(new)
    out = drive(
        dag.server,
        [run_call("get_dag_run", dag_id=dag.dag_id, dag_run_id=run_id) for run_id in (old, new)]
        + [ti_call("get_task_instance", dag_id=dag.dag_id, dag_run_id=old, task_id="extract")],
    )
    numbers = [ok(result)["dag_versions"][0]["version_number"] for result in out[:2]]
    assert numbers == [1, 2]
    assert ok(out[2])["dag_version"]["version_number"] == 1


def test_a_conf_the_dags_params_refuse_is_a_400_and_makes_no_run(airflow_server: Server) -> None:
    # An outsider's find: Airflow checks a trigger's conf against the DAG's params and answers 400, making
    # no run; Stateport made the run, and each of its tasks failed as it started.
    made = Dag(airflow_server, unique("afparams"), unique("q"))
    spec = {
        **mapped_spec(made.queue),
        "params": {
            "n": {"default": 3, "schema": {"type": "integer", "minimum": 1}, "description": "how many"},
            "name": {"schema": {"type": "string", "maxLength": 5}},
        },
    }
    with made.http() as http:
        assert http.put(f"/api/v2/dags/{made.dag_id}", json=spec).status_code == 200
        # A schema that is not one is refused at registration, naming the param.
        bad = {**spec, "params": {"n": {"schema": {"type": "integr"}}}}
        refused = http.put(f"/api/v2/dags/{made.dag_id}", json=bad)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "params", "n", "schema"], refused.text
        # Stored as registered: the spec reads back with its params.
        shown = http.get(f"/api/v2/dags/{made.dag_id}").json()["params"]
        assert shown == {"n": spec["params"]["n"], "name": {**spec["params"]["name"], "description": None}}

    def trigger(conf: dict[str, Any]) -> dict[str, Any]:
        body = trigger_body(conf=conf)
        return run_call("trigger_dag_run", dag_id=made.dag_id, trigger_dag_run_post_body=body)

    out = drive(
        made.server,
        [
            trigger({"n": 0, "name": "ab"}),
            trigger({"n": 2}),
            trigger({"name": "abcdefgh"}),
            run_call("get_dag_runs", dag_id=made.dag_id),
            trigger({"name": "ab", "extra": [1]}),
        ],
    )
    for result, said in zip(
        out[:3],
        [
            "Invalid input for param n: 0 is less than the minimum of 1",
            "Invalid input for param name: No value passed and Param has no default value",
            'Invalid input for param name: "abcdefgh" is longer than 5 characters',
        ],
        strict=True,
    ):
        assert (result["error"], result["status"]) == ("BadRequestException", 400), result
        assert result["data"]["detail"] == said, result
    assert ok(out[3])["total_entries"] == 0  # no run was made
    assert ok(out[4], "DAGRunResponse")["conf"] == {"name": "ab", "extra": [1]}  # n from its default
