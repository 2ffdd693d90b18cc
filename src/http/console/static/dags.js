"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;
  const PAGE = 25;
  let offset = 0;

  function assetsOf(tasks) {
    const names = new Set();
    for (const t of tasks) for (const a of [...(t.inlets || []), ...(t.outlets || [])]) names.add(typeof a === "string" ? a : a.name);
    return Array.from(names).sort();
  }

  // The last hour's counts of each DAG shown, re-counted when the run event stream announces a change of
  // one of its runs (at most every 3 seconds: a count is four calls per DAG).
  const cells = new Map(), changed = new Set();
  function count(dagId) {
    const cell = cells.get(dagId);
    if (!cell) return Promise.resolve();
    return SP.hourCounts(dagId).then(
      c => SP.rerender(cell, JSON.stringify(c), () => SP.clear(cell).append(SP.countsNode(dagId, c))),
      e => { SP.forget(cell); cell.textContent = SP.said(e); });
  }
  async function recount() {
    // After a reconnect or a recheck nothing is marked: every DAG shown is counted again.
    const todo = changed.size ? Array.from(changed) : Array.from(cells.keys());
    changed.clear();
    await Promise.all(todo.map(count));
  }

  async function load() {
    const prefix = $("dag-prefix").value.trim();
    const q = new URLSearchParams({ limit: PAGE, offset: offset });
    if (prefix) q.set("dag_id_prefix_pattern", prefix);
    const tbody = $("dags-table").tBodies[0];
    let answer;
    try { answer = await api("/api/v2/dags?" + q.toString()); }
    catch (e) { SP.clear(tbody).append(el("tr", {}, el("td", { colspan: 8, className: "error", text: SP.said(e) }))); return; }
    SP.clear(tbody);
    cells.clear();
    const dags = answer.data.dags;
    if (!dags.length) tbody.append(el("tr", {}, el("td", { colspan: 8, text: "No DAG is registered" + (prefix ? " with that prefix." : ".") })));
    for (const dag of dags) {
      const tasks = dag.tasks || [];
      const queues = Array.from(new Set(tasks.map(t => t.queue || "default"))).sort();
      const teardowns = tasks.filter(t => t.teardown).map(t => t.task_id);
      const countCell = el("td", {}, "…");
      tbody.append(el("tr", { "data-dag-id": dag.dag_id },
        el("th", { scope: "row" }, el("a", { href: SP.dagUrl(dag.dag_id), text: dag.dag_id })),
        el("td", {}, el("code", { className: "nowrap", title: dag.version, text: (dag.version || "").slice(0, 12) })),
        dag.has_import_errors   // its stored spec cannot be read: the server sends no tasks
          ? el("td", { className: "error", title: "The stored spec of its current version cannot be read", text: "spec cannot be read" })
          : el("td", { text: String(tasks.length) }),
        el("td", { text: queues.join(", ") }),
        el("td", { text: dag.result_task || "–" }),
        el("td", { text: teardowns.join(", ") || "–" }),
        el("td", { text: assetsOf(tasks).join(", ") || "–" }),
        countCell));
      cells.set(dag.dag_id, countCell);
      count(dag.dag_id);
    }
    pager(answer.data.total_entries);
  }

  function pager(total) {
    const nav = SP.clear($("dags-pager"));
    const prev = el("button", { type: "button", text: "Previous", disabled: offset === 0, onclick: () => { offset = SP.previousOffset(offset, PAGE, total); load(); } });
    const next = el("button", { type: "button", text: "Next", disabled: offset + PAGE >= total, onclick: () => { offset += PAGE; load(); } });
    nav.append(prev, el("span", { text: SP.pageRange(offset, PAGE, total, "0 DAGs") }), next);
  }

  $("dag-filter").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; load(); });
  load().then(() => SP.live({
    wants: (e) => { if (!cells.has(e.dag_id)) return false; changed.add(e.dag_id); return true; },
    refresh: recount,
    status: $("dags-live"),
    gap: 3,
    initial: false,
  }));
})();
