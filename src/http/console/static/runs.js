"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;
  const PAGE = 25;
  const MAX_SINCE = 100 * 366 * 86400;   // "since" at most a century: far past any run, and a valid date
  const form = $("runs-filter");
  const params = new URLSearchParams(location.search);
  $("f-dag").value = params.get("dag_id") || "";
  $("f-state").value = params.get("state") || "";
  $("f-since").value = params.get("since") || "";
  const since = sinceSeconds(params.get("since"));
  let offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);

  // The filters live in the address, so a filtered page can be bookmarked and shared.
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const name of ["dag_id", "state", "since"]) { const v = form.elements[name].value.trim(); if (v) q.set(name, v); }
    location.assign(location.pathname + (q.toString() ? "?" + q.toString() : ""));
  });

  api("/api/v2/dags?limit=100").then(a => {
    const list = $("dag-ids");
    for (const d of a.data.dags) list.append(el("option", { value: d.dag_id }));
  }, () => {});

  // "since" (seconds ago) from the address: none, a whole number of seconds a date can be computed from,
  // or a message saying why not (an address is typed and edited by hand: a bad value must not stop the page).
  function sinceSeconds(raw) {
    if (!raw) return { seconds: null };
    if (!/^[0-9]+$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_SINCE) {
      return { error: "The address's since=" + raw + " is not a whole number of seconds from 1 to " + MAX_SINCE +
        " (a century): choose a period under \"Run after, in the last\" and Filter." };
    }
    return { seconds: Number(raw) };
  }

  function outcomeText(run) {
    const o = run.outcome;
    if (!o) return "–";
    if (o.state === "failed") return "failed" + (o.failed_task ? " at " + o.failed_task : "") + (o.reason ? " (" + o.reason + ")" : "");
    const keys = Object.keys(o.results || {});
    return "success" + (keys.length ? ": results of " + keys.join(", ") : "");
  }

  async function load() {
    const dagId = params.get("dag_id") || "~";
    const q = new URLSearchParams({ limit: PAGE, offset: offset, order_by: "-id" });
    if (params.get("state")) q.set("state", params.get("state"));
    if (since.seconds) q.set("run_after_gte", new Date(Date.now() - since.seconds * 1000).toISOString());
    const tbody = $("runs-table").tBodies[0];
    let answer;
    try { answer = await api("/api/v2/dags/" + enc(dagId) + "/dagRuns?" + q.toString()); }
    catch (e) {
      SP.forget(tbody);
      SP.clear(tbody).append(el("tr", {}, el("td", { colspan: 7, className: "error", text: (e.status === 404 ? "No such DAG: " : "") + SP.said(e) })));
      throw e;
    }
    const runs = answer.data.dag_runs;
    SP.rerender(tbody, JSON.stringify(runs), () => render(tbody, runs));
    pager(answer.data.total_entries);
  }

  function render(tbody, runs) {
    SP.clear(tbody);
    if (!runs.length) tbody.append(el("tr", {}, el("td", { colspan: 7, text: "No run matches." })));
    for (const run of runs) {
      tbody.append(el("tr", { "data-run-id": run.dag_run_id },
        el("th", { scope: "row" }, el("a", { href: SP.runUrl(run.dag_id, run.dag_run_id), text: run.dag_run_id })),
        el("td", {}, el("a", { href: SP.dagUrl(run.dag_id), text: run.dag_id })),
        el("td", {}, SP.stateBadge(run.state)),
        el("td", {}, SP.time(run.queued_at)),
        el("td", {}, SP.time(run.start_date)),
        el("td", { text: SP.duration(run.duration) }),
        el("td", { text: outcomeText(run) })));
    }
  }

  function go(to) {
    const q = new URLSearchParams(location.search);
    if (to) q.set("offset", to); else q.delete("offset");
    location.assign(location.pathname + "?" + q.toString());
  }
  function pager(total) {
    if (!SP.rerender($("runs-pager"), String(total), () => {})) return;
    const nav = SP.clear($("runs-pager"));
    nav.append(
      el("button", { type: "button", text: "Newer", disabled: offset === 0, onclick: () => go(SP.previousOffset(offset, PAGE, total)) }),
      el("span", { text: SP.pageRange(offset, PAGE, total, "0 runs") }),
      el("button", { type: "button", text: "Older", disabled: offset + PAGE >= total, onclick: () => go(offset + PAGE) }));
  }

  // Pushed, not polled: the server's run event stream (of this DAG's runs when the list is filtered to
  // one) re-reads the page when a run changes; a slow re-read only while that stream is down.
  if (since.error) {
    // Nothing is listed for a filter the page cannot apply, as for a state the API refuses.
    SP.clear($("runs-table").tBodies[0]).append(el("tr", {}, el("td", { colspan: 7, className: "error", text: since.error })));
  } else {
    SP.live({ dagId: params.get("dag_id") || null, refresh: load, status: $("runs-live") });
  }
})();
