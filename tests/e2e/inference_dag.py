"""The inference DAG of the synchronous-execution proposal, for real worker processes.

rephrase the question several times -> ask each version (mapped) -> de-duplicate the answers -> verify each
answer (mapped) -> answer (the result task); a teardown (``cleanup``) runs after ``answer`` and takes about
6 s, recording when it finished in its task state. The "model" is deterministic pure Python.

Run by ``stateport worker tests.e2e.inference_dag``. ``INFERENCE_DAG_SUFFIX`` (set by the test) makes the
dag_id and queue unique, so concurrent test sessions sharing a database never claim each other's work.
``conf``: ``question`` (str), ``versions`` (how many phrasings, default 3), ``fail_verify`` (bool).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

from stateport.worker import AsyncTaskContext, Dag, NonRetryableError, SyncTaskContext

SUFFIX = os.environ.get("INFERENCE_DAG_SUFFIX", "")
# Long enough that a caller who got the outcome before the teardown ended cannot be overtaken by it merely
# because a busy machine delayed the caller's polling.
TEARDOWN_S = 6.0

dag = Dag(f"inference{SUFFIX}", result_task="answer", queue=f"inference{SUFFIX}")

# The model's "knowledge": an answer and its references for each topic it knows.
KNOWLEDGE: dict[str, tuple[str, list[str]]] = {
    "dag": ("A DAG is a directed acyclic graph of tasks.", ["docs/core-concepts/dags"]),
    "teardown": ("A teardown task cleans up after the tasks it follows.", ["docs/howto/setup-and-teardown"]),
}
SOURCES = {"docs/core-concepts/dags", "docs/howto/setup-and-teardown"}
PHRASINGS = ["{q}", "In other words: {q}", "Could you explain: {q}", "Briefly, {q}", "ELI5: {q}"]


def _topic(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return next((w for w in words if w in KNOWLEDGE), "unknown")


def _normalize(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


@dag.task
def rephrase(ctx: SyncTaskContext) -> list[str]:
    """The question and rephrased versions of it (the original first)."""
    question = str(ctx.conf["question"])
    count = int(ctx.conf.get("versions", 3))
    return [PHRASINGS[i % len(PHRASINGS)].format(q=question) for i in range(count)]


@dag.task(expand=rephrase, retries=1)
async def ask(ctx: AsyncTaskContext) -> dict[str, Any]:
    """Ask the model one version; the versions of a question get one answer, worded differently."""
    await asyncio.sleep(0.05)  # the model's latency
    text, references = KNOWLEDGE.get(_topic(ctx.input), ("I do not know.", []))
    # Odd versions word it differently (case, spacing): de-duplication must see through that.
    worded = text.upper() if ctx.map_index % 2 else text
    return {"version": ctx.input, "text": worded + ("  " * ctx.map_index), "references": references}


@dag.task(upstream=[ask])
def dedupe(ctx: SyncTaskContext) -> list[dict[str, Any]]:
    """The distinct answers, in the order first seen."""
    seen: dict[str, dict[str, Any]] = {}
    for answer in ctx.inputs["ask"]:
        distinct = {"text": answer["text"].strip(), "references": answer["references"]}
        seen.setdefault(_normalize(answer["text"]), distinct)
    return list(seen.values())


@dag.task(expand=dedupe)
async def verify(ctx: AsyncTaskContext) -> dict[str, Any]:
    """Check an answer's references exist; ``conf.fail_verify`` makes a reference go missing."""
    answer = ctx.input
    references = list(answer["references"]) + (["docs/missing"] if ctx.conf.get("fail_verify") else [])
    missing = [r for r in references if r not in SOURCES]
    if missing:
        raise NonRetryableError(f"references not found: {missing}")
    await ctx.state.set("verified", references)
    return {**answer, "verified": True}


@dag.task(upstream=[verify])
async def answer(ctx: AsyncTaskContext) -> dict[str, Any]:
    """The result: the question and its verified answer."""
    verified = ctx.inputs["verify"]
    return {
        "question": ctx.conf["question"],
        "answer": verified[0]["text"],
        "sources": verified[0]["references"],
    }


@dag.task(upstream=[answer], teardown=True)
async def cleanup(ctx: AsyncTaskContext) -> dict[str, float]:
    """Release the (pretend) model resources: slow on purpose, and it records when it finished."""
    started = time.time()
    await asyncio.sleep(TEARDOWN_S)
    finished = time.time()
    await ctx.state.set("finished_at", finished)
    return {"started_at": started, "finished_at": finished}
