"""The processes that check large bodies off the event loop (``stateport.http.checking``)."""

from __future__ import annotations

import os

import pytest

from stateport.domain.errors import Invalid, Unavailable
from stateport.http.checking import MIN_BYTES, CheckProcesses
from stateport.http.errors import RequestInvalid

LARGE = b" " * MIN_BYTES
SMALL = b" " * (MIN_BYTES - 1)


# The checks: module-level functions, which a checking process imports by name.
def names_its_process(body: bytes) -> Invalid:
    return Invalid(f"checked in {os.getpid()}", field="result")


def refuses_in_fastapis_form(body: bytes) -> RequestInvalid:
    return RequestInvalid.one("json_invalid", ["body", 3], "JSON is malformed", "xyz")


def passes(body: bytes) -> None:
    return None


def dies(body: bytes) -> None:
    os._exit(3)  # as a process killed for its memory would end


async def test_a_large_body_is_checked_in_another_process_and_its_error_raised_here() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(Invalid) as raised:
            await checks.check(names_its_process, LARGE)
        assert raised.value.field == "result"
        pid = int(raised.value.detail.removeprefix("checked in "))
        assert pid != os.getpid()
        assert await checks.check(passes, LARGE) is True
        assert checks.offloaded == 2
    finally:
        await checks.close()


async def test_a_fastapi_form_refusal_comes_back_whole() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(RequestInvalid) as raised:
            await checks.check(refuses_in_fastapis_form, LARGE)
        assert raised.value.errors == [
            {"type": "json_invalid", "loc": ["body", 3], "msg": "JSON is malformed", "input": "xyz"}
        ]
    finally:
        await checks.close()


async def test_a_small_body_a_closed_pool_and_no_processes_leave_the_check_to_the_caller() -> None:
    checks = CheckProcesses(1)
    assert await checks.check(names_its_process, SMALL) is False
    await checks.close()
    assert await checks.check(names_its_process, LARGE) is False
    assert await CheckProcesses(0).check(names_its_process, LARGE) is False
    assert checks.offloaded == 0


async def test_a_process_that_dies_under_a_check_is_unavailable_and_the_next_check_gets_a_new_one() -> None:
    checks = CheckProcesses(1)
    try:
        with pytest.raises(Unavailable, match="checking process ended"):
            await checks.check(dies, LARGE)
        assert await checks.check(passes, LARGE) is True
    finally:
        await checks.close()


def test_the_metrics_directory_variable_is_prometheus_multiprocess_one() -> None:
    from stateport.http import checking
    from stateport.telemetry import metrics

    assert checking.MULTIPROC_DIR == metrics.MULTIPROC_DIR
