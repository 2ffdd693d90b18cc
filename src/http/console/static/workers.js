"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;

  // The server's worker registry (GET /api/v2/workers): every worker seen by a claim or a heartbeat in the
  // window, idle ones included, and the queues' ready and running task instances.
  async function load() {
    const windowS = parseInt($("window").value, 10);
    const body = (await api("/api/v2/workers?limit=200&seen_within=" + enc(windowS))).data;
    const signature = JSON.stringify([body.workers, body.queues]);
    if (!SP.rerender($("workers-table"), signature, () => {})) return;
    const wb = SP.clear($("workers-table").tBodies[0]);
    if (!body.workers.length) wb.append(el("tr", {}, el("td", { colspan: 8, text: "No worker claimed or heartbeat in this window." })));
    for (const w of body.workers) {
      wb.append(el("tr", { "data-worker": w.worker_id },
        el("th", { scope: "row", text: w.worker_id }),
        el("td", { text: w.hostname || "–" }),
        el("td", { text: w.pid === null ? "–" : String(w.pid) }),
        el("td", { text: w.queues.join(", ") || "–" }),
        el("td", { "data-running": String(w.running), text: String(w.running) + (w.running ? "" : " (idle)") }),
        el("td", {}, SP.time(w.last_claim_at)),
        el("td", {}, SP.time(w.last_heartbeat_at)),
        el("td", {}, SP.time(w.last_seen_at))));
    }
    const qb = SP.clear($("queues-table").tBodies[0]);
    if (!body.queues.length) qb.append(el("tr", {}, el("td", { colspan: 4, text: "No task instance is queued or running." })));
    for (const q of body.queues) {
      qb.append(el("tr", { "data-queue": q.queue },
        el("th", { scope: "row", text: q.queue }),
        el("td", { text: String(q.ready) }),
        el("td", { text: String(q.running) }),
        el("td", {}, SP.time(q.oldest_ready_at))));
    }
  }

  const show = () => load().then(() => SP.notice(""), e => SP.notice(SP.said(e)));
  $("window").addEventListener("change", show);
  // Runs' changes (a task claimed, ended, queued) are pushed by the run event stream; a worker that only
  // waits for work announces nothing, so the registry is also re-read every 10 seconds while visible.
  SP.every(10, show);
  SP.live({ refresh: show, status: $("workers-live"), initial: false });
})();
