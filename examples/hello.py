"""A first DAG for ``stateport worker examples.hello --register`` (README, "A first run").

``greet`` writes its greeting into its task state, and counts its tries there; ``answer``, the result
task, returns the greeting with a number computed from the run's ``conf`` (``{"name": "Ada"}``).
"""

from __future__ import annotations

from typing import Any

from stateport.worker import Dag, SyncTaskContext

dag = Dag("hello", result_task="answer")


@dag.task(retries=1)
def greet(ctx: SyncTaskContext) -> str:
    # Task state belongs to the task instance, not to one try: a retry would read 1 here and write 2.
    tries = ctx.state.get("tries", 0) + 1
    ctx.state.set("tries", tries)
    greeting = f"Hello, {ctx.conf.get('name', 'world')}!"
    ctx.state.set("greeting", greeting)
    return greeting


@dag.task(upstream=[greet])
def answer(ctx: SyncTaskContext) -> dict[str, Any]:
    name = str(ctx.conf.get("name", "world"))
    return {"greeting": ctx.input, "letters": sum(c.isalpha() for c in name)}
