"""Defining a DAG in Python: ``Dag`` and its ``@dag.task`` decorator, which builds the spec a server runs.

A task function takes no argument, or one: the ``TaskContext`` of the task instance (an
``AsyncTaskContext`` for ``async def`` functions, a ``SyncTaskContext`` for plain ones). What it returns
is the task's result (any JSON value), which downstream tasks receive as their ``inputs``.

    dag = Dag("inference", result_task="answer")

    @dag.task
    async def rephrase(ctx: AsyncTaskContext) -> list[str]: ...

    @dag.task(upstream=[rephrase], expand=rephrase, retries=2)
    async def ask(ctx: AsyncTaskContext) -> str:
        return model(ctx.input)            # one element of rephrase's list per task instance
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from stateport.domain.dags import validate_spec
from stateport.domain.errors import Invalid
from stateport.domain.models import AssetRef, DagSpec, TaskSpec, TriggerRule
from stateport.domain.models import ParamSpec as Param
from stateport.domain.values import check_identifier

if TYPE_CHECKING:
    from stateport.worker.client import WorkerClient

P = ParamSpec("P")
R = TypeVar("R")

AssetLike = str | AssetRef | dict[str, str]


class Task(Generic[P, R]):
    """A task function with its spec; calling it calls the function unchanged (handy in unit tests)."""

    def __init__(self, fn: Callable[P, R], spec: TaskSpec) -> None:
        self.fn = fn
        self.spec = spec
        self.is_async = inspect.iscoroutinefunction(fn)
        self.takes_context = _takes_context(fn)
        self.__name__ = getattr(fn, "__name__", spec.task_id)
        self.__qualname__ = getattr(fn, "__qualname__", spec.task_id)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.spec.task_id!r} ({'async' if self.is_async else 'sync'})>"


class Dag:
    """A DAG of decorated task functions; ``spec()`` is what ``push`` registers with the server.

    ``queue`` is the default queue of its tasks (a task's own ``queue=`` wins).
    """

    def __init__(
        self,
        dag_id: str,
        result_task: str | Task[Any, Any] | None = None,
        *,
        queue: str = "default",
        max_active_runs: int | None = None,
        max_queued_runs: int | None = None,
        deadline_s: float | None = None,
        params: Mapping[str, Param] | None = None,
    ):
        """``max_active_runs``, ``max_queued_runs``, ``deadline_s``: the run policies of the spec
        (docs/runs.md, "Runs under pressure"); None: none. ``params``: the DAG's params by name, which the
        server checks each trigger's conf against (``Param``: a default and a JSON Schema)."""
        self.dag_id = dag_id
        self.result_task: str | Task[Any, Any] | None = result_task
        self.queue = queue
        self.max_active_runs = max_active_runs
        self.max_queued_runs = max_queued_runs
        self.deadline_s = deadline_s
        self.params = None if params is None else dict(params)
        self._tasks: dict[str, Task[Any, Any]] = {}

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The tasks by task_id, in the order they were defined."""
        return dict(self._tasks)

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        task_id: str | None = None,
        upstream: Iterable[str | Task[Any, Any]] = (),
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        setup: bool = False,
        teardown: bool = False,
        retries: int = 0,
        retry_delay_s: float | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        inlets: Sequence[AssetLike] = (),
        outlets: Sequence[AssetLike] = (),
        expand: str | Task[Any, Any] | None = None,
        key: bool | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        task_id: str | None = None,
        upstream: Iterable[str | Task[Any, Any]] = (),
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        setup: bool = False,
        teardown: bool = False,
        retries: int = 0,
        retry_delay_s: float | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        inlets: Sequence[AssetLike] = (),
        outlets: Sequence[AssetLike] = (),
        expand: str | Task[Any, Any] | None = None,
        key: bool | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Declare a task (``@dag.task`` or ``@dag.task(...)``); its task_id defaults to the function's name.

        ``upstream`` and ``expand`` take task_ids or decorated tasks; a task that ``expand``s over an upstream
        has it added to ``upstream`` if it is not there. Every other argument is the spec field of that name
        (design.md §1); ``timeout`` (seconds) is enforced by the worker.
        """

        def decorate(function: Callable[P, R]) -> Task[P, R]:
            name: str = task_id or str(getattr(function, "__name__", ""))
            if name in self._tasks:
                raise Invalid(f"DAG '{self.dag_id}' already has a task '{name}'")
            ups = [_task_id(u) for u in upstream]
            over = None if expand is None else _task_id(expand)
            if over is not None and over not in ups:
                ups.append(over)
            try:
                spec = msgspec.convert(
                    {
                        "task_id": name,
                        "upstream": ups,
                        "trigger_rule": str(trigger_rule),
                        "setup": setup,
                        "teardown": teardown,
                        "retries": retries,
                        "retry_delay_s": retry_delay_s,
                        "timeout": timeout,
                        "queue": queue or self.queue,
                        "inlets": [_asset(a) for a in inlets],
                        "outlets": [_asset(a) for a in outlets],
                        "expand": over,
                        "key": key,
                    },
                    TaskSpec,
                )
            except msgspec.ValidationError as exc:
                raise Invalid(f"task '{name}' of DAG '{self.dag_id}': {exc}") from exc
            task = Task(function, spec)
            self._tasks[name] = task
            return task

        return decorate if fn is None else decorate(fn)

    def spec(self) -> DagSpec:
        """The DAG spec of the tasks declared so far, validated as the server would (Invalid otherwise)."""
        # As the server checks it when the DAG is registered: a "/" made the registration a 404 (the route
        # read two segments), which read as a wrong URL (an outsider's find).
        check_identifier(self.dag_id, "dag_id", new=True)
        if not self._tasks:
            raise Invalid(f"DAG '{self.dag_id}' has no tasks")
        result = None if self.result_task is None else _task_id(self.result_task)
        spec = DagSpec(
            tasks=[t.spec for t in self._tasks.values()],
            result_task=result,
            max_active_runs=self.max_active_runs,
            max_queued_runs=self.max_queued_runs,
            deadline_s=self.deadline_s,
            params=self.params,
        )
        validate_spec(spec)
        return spec

    async def push(self, client: WorkerClient) -> str:
        """Register the spec with the server; returns the DAG version the server computed."""
        registered = await client.register(self.dag_id, self.spec())
        return str(registered.get("version", ""))

    def __repr__(self) -> str:
        return f"<Dag {self.dag_id!r} with {len(self._tasks)} task(s)>"


def _task_id(ref: str | Task[Any, Any]) -> str:
    return ref if isinstance(ref, str) else ref.task_id


def _asset(asset: AssetLike) -> str | AssetRef:
    if isinstance(asset, dict):
        return msgspec.convert(asset, AssetRef)
    return asset


def _takes_context(fn: Callable[..., Any]) -> bool:
    """Whether the function wants the TaskContext: it has a positional parameter (or ``*args``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature: give them the context
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for p in parameters:
        if p.kind in positional and p.default is inspect.Parameter.empty:
            return True
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
    return False


__all__ = ["Dag", "Task"]
