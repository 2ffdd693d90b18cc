"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;

  // Stateport keeps no table of workers: a worker is known by the task instances it claimed. This page reads
  // the task instances of the recent runs through the public API and groups them by worker and by queue.
  async function recentRuns(windowS) {
    const since = new Date(Date.now() - windowS * 1000).toISOString();
    // The most recently updated first (where the latest claims are), then the oldest unfinished ones.
    const [updated, active] = await Promise.all([
      api("/api/v2/dags/~/dagRuns?limit=100&order_by=-updated_at&updated_at_gte=" + enc(since)),
      api("/api/v2/dags/~/dagRuns?limit=100&order_by=id&state=queued&state=running"),
    ]);
    const runs = new Map();
    for (const r of [...updated.data.dag_runs, ...active.data.dag_runs]) runs.set(r.dag_id + "\u0000" + r.dag_run_id, r);
    return Array.from(runs.values()).slice(0, 100);
  }

  async function load() {
    const windowS = parseInt($("window").value, 10);
    const runs = await recentRuns(windowS);
    const lists = await Promise.all(runs.map(r =>
      api(SP.apiRun(r.dag_id, r.dag_run_id) + "/taskInstances?limit=100").then(a => a.data.task_instances, () => [])));
    const workers = new Map(), queues = new Map();
    const cutoff = Date.now() - windowS * 1000;
    for (const ti of lists.flat()) {
      const q = ti.queue || "default";
      const queue = queues.get(q) || { ready: 0, running: 0, oldest: null };
      if (ti.state === "queued") {
        queue.ready++;
        if (!queue.oldest || ti.queued_when < queue.oldest) queue.oldest = ti.queued_when || ti.run_after;
      }
      if (ti.state === "running") queue.running++;
      queues.set(q, queue);
      if (!ti.hostname) continue;
      const started = ti.start_date ? Date.parse(ti.start_date) : 0;
      if (ti.state !== "running" && started < cutoff) continue;
      const w = workers.get(ti.hostname) || { queues: new Set(), running: 0, claimed: 0, last: null, lease: null };
      w.queues.add(q);
      w.claimed++;
      if (ti.state === "running") {
        w.running++;
        if (ti.lease_expires_at && (!w.lease || ti.lease_expires_at > w.lease)) w.lease = ti.lease_expires_at;
      }
      if (ti.start_date && (!w.last || ti.start_date > w.last)) w.last = ti.start_date;
      workers.set(ti.hostname, w);
    }
    const signature = JSON.stringify([Array.from(workers).map(([id, w]) => [id, Array.from(w.queues), w.running, w.claimed, w.last, w.lease]), Array.from(queues)]);
    if (!SP.rerender($("workers-table"), signature, () => {})) return;
    const wb = SP.clear($("workers-table").tBodies[0]);
    if (!workers.size) wb.append(el("tr", {}, el("td", { colspan: 6, text: "No worker claimed a task instance in this window." })));
    for (const [id, w] of Array.from(workers).sort()) {
      wb.append(el("tr", { "data-worker": id },
        el("th", { scope: "row", text: id }),
        el("td", { text: Array.from(w.queues).sort().join(", ") }),
        el("td", { text: String(w.running) }),
        el("td", { text: String(w.claimed) }),
        el("td", {}, SP.time(w.last)),
        el("td", {}, SP.time(w.lease))));
    }
    const qb = SP.clear($("queues-table").tBodies[0]);
    if (!queues.size) qb.append(el("tr", {}, el("td", { colspan: 4, text: "No task instance in this window." })));
    for (const [name, q] of Array.from(queues).sort()) {
      qb.append(el("tr", { "data-queue": name },
        el("th", { scope: "row", text: name }),
        el("td", { text: String(q.ready) }),
        el("td", { text: String(q.running) }),
        el("td", {}, SP.time(q.oldest))));
    }
  }

  $("window").addEventListener("change", () => load().catch(e => SP.notice(e.detail || String(e))));
  SP.every(10, () => load().then(() => SP.notice(""), e => SP.notice(e.detail || String(e))));
})();
