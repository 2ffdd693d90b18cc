"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;
  const dagId = document.body.dataset.dagId;
  const runId = document.body.dataset.runId;
  const RUN = SP.apiRun(dagId, runId);
  const FINAL = new Set(["success", "failed", "upstream_failed", "skipped"]);
  let run = null, dag = null, dagRead = false, tis = [];
  // The task instances are shown a page at a time, and a change re-reads only the page shown: a wide run
  // (thousands of mapped task instances) was read whole on every change, page after page (an outsider's find).
  const PAGE = 100;
  let tiOffset = 0, tiTotal = 0;

  const cancel = $("cancel-button"), retrigger = $("retrigger-button"), reason = $("actions-reason");
  const canWrite = [SP.gate(cancel, reason), SP.gate(retrigger, reason)].every(Boolean);
  const ENDED = "The run has ended: there is nothing to cancel.";
  const UNREADABLE = "Its DAG's spec cannot be read: register it again to trigger it.";
  // The server's reason "no worker serving DAG 'd' claimed queue 'q' for N s" appears and grows with no event announcing
  // it: while a task instance waits for a worker, the run alone is re-read this often (rereadWhileWaiting).
  const WAITING_REREAD_S = 10;

  function fact(dl, name, value) { dl.append(el("dt", { text: name }), el("dd", {}, value)); }

  function showRun() {
    // Live regions are re-rendered only when what they say changed, so a screen reader hears each change once.
    SP.rerender($("run-state"), run.state, () => SP.clear($("run-state")).append(SP.stateBadge(run.state)));
    const dl = SP.clear($("run-facts"));
    fact(dl, "DAG", el("a", { href: SP.dagUrl(run.dag_id), text: run.dag_id }));
    fact(dl, "Spec version", el("code", { text: run.dag_version || "–" }));
    fact(dl, "Queued", SP.time(run.queued_at));
    fact(dl, "Started", SP.time(run.start_date));
    fact(dl, "Ended", SP.time(run.end_date));
    fact(dl, "Duration", SP.duration(run.duration));
    $("run-conf").textContent = SP.pretty(run.conf || {});
    showActions();
    showOutcome(run.outcome);
    showWaiting();
  }

  // The buttons start disabled (run.html.j2): they act on the run as read, so they open only once it has
  // been read, and a re-trigger always sends the conf that was read.
  // A DAG whose stored spec cannot be read (has_import_errors) takes no trigger: the server refuses it.
  // Trigger again opens once the DAG has been read (or could not be: the server then says why).
  function showActions() {
    if (!canWrite) return;
    const done = run.state === "success" || run.state === "failed";
    const spoiled = dag !== null && dag.has_import_errors === true;
    cancel.disabled = done;
    cancel.title = done ? ENDED : "";
    retrigger.disabled = !dagRead || spoiled;
    retrigger.title = spoiled ? UNREADABLE : "";
    reason.textContent = [done ? ENDED : "", spoiled ? UNREADABLE : ""].filter(Boolean).join(" ");
  }
  function noActions(why) {
    for (const button of [cancel, retrigger]) { button.disabled = true; button.title = why; }
    reason.textContent = why;
  }

  // A result over the inline limit is a reference; its bytes come from the run's blob route, with the token.
  function isBlob(value) { return value && typeof value === "object" && value.__stateport_blob__; }
  function resultNode(taskId, value) {
    if (!isBlob(value)) return el("pre", { tabindex: "0", "data-result": taskId, text: SP.pretty(value) });
    const ref = value.__stateport_blob__;
    const link = el("button", { type: "button", text: "Download " + taskId + ".json (" + ref.size + " bytes)" });
    link.addEventListener("click", async () => {
      const url = ref.url && /^https?:/.test(ref.url) && !ref.url.startsWith(location.origin) ? ref.url : null;
      if (url) { location.assign(url); return; }   // a presigned S3 URL needs no token
      const response = await api(RUN + "/blob?ref=" + enc(ref.ref), { raw: true });
      const blob = await response.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: taskId + ".json" });
      document.body.append(a); a.click(); a.remove();
    });
    return el("div", {}, el("p", { text: "Stored by reference (sha256 " + ref.sha256 + ")." }), link);
  }
  function showOutcome(outcome) {
    SP.rerender($("outcome"), SP.stringify(outcome || null), () => renderOutcome(outcome));
  }
  function renderOutcome(outcome) {
    const box = SP.clear($("outcome"));
    if (!outcome) { box.append(el("p", { text: "Not known yet." })); return; }
    // The reason says what happened to the task it names (failed, upstream_failed, skipped) or to the run
    // (cancelled, deadline_exceeded): "task X failed" said so of an upstream_failed or skipped task.
    box.append(el("p", {}, "Outcome: ", SP.stateBadge(outcome.state),
      outcome.reason ? " — " + outcome.reason : (outcome.failed_task ? " — task '" + outcome.failed_task + "'" : "")));
    if (outcome.error) box.append(el("pre", { text: outcome.error }));
    const results = outcome.results || {};
    for (const [taskId, value] of Object.entries(results)) {
      box.append(el("h3", { text: "Result of " + taskId }), resultNode(taskId, value));
    }
  }

  function stateLink(ti) {
    const q = new URLSearchParams({ dag_id: ti.dag_id, run_id: ti.dag_run_id, task_id: ti.task_id, map_index: ti.map_index });
    return el("a", { href: SP.prefix + "/state?" + q.toString(), text: "keys", "aria-label": "State keys of " + ti.task_id });
  }
  function showTis() {
    const tbody = $("tis-table").tBodies[0];
    SP.rerender(tbody, JSON.stringify(tis), () => renderTis(SP.clear(tbody)));
    const range = SP.pageRange(tiOffset, PAGE, tiTotal, "none yet");
    $("tis-caption").textContent = "The latest try of each task and map index: " + range;
    const nav = SP.clear($("tis-pager"));
    if (tiTotal > PAGE || tiOffset > 0) {
      nav.append(
        el("button", { type: "button", text: "Previous", disabled: tiOffset === 0, onclick: () => { tiOffset = SP.previousOffset(tiOffset, PAGE, tiTotal); loadTis(); } }),
        el("span", { text: range }),
        el("button", { type: "button", text: "Next", disabled: tiOffset + PAGE >= tiTotal, onclick: () => { tiOffset += PAGE; loadTis(); } }));
    }
    showWaiting();
  }
  function renderTis(tbody) {
    for (const ti of tis) {
      tbody.append(el("tr", { "data-task-id": ti.task_id, "data-state": ti.state || "none" },
        el("th", { scope: "row", text: ti.task_id }),
        el("td", { text: ti.map_index < 0 ? "–" : String(ti.map_index) }),
        el("td", {}, SP.stateBadge(ti.state)),
        el("td", { text: ti.try_number + (ti.max_tries ? " of " + (ti.max_tries + 1) : "") }),
        el("td", { text: ti.hostname || "–" }),
        el("td", {}, SP.time(ti.start_date)),
        el("td", { text: SP.duration(ti.duration) }),
        el("td", {}, SP.time(ti.lease_expires_at)),
        el("td", { text: ti.error || "–" }),
        el("td", {}, stateLink(ti))));
    }
  }

  // Why the run has no outcome yet, read off its task instances and its DAG's spec.
  function showWaiting() {
    const section = $("waiting-section");
    if (!run || run.outcome) { section.hidden = true; return; }
    section.hidden = false;
    const spec = new Map(((dag && dag.tasks) || []).map(t => [t.task_id, t]));
    const stateOf = new Map(tis.map(t => [t.task_id, t.state]));
    const whole = tis.length >= tiTotal;   // every task instance is on the page shown
    const reasons = [];
    // The server's own reason, when it has one: held back by max_active_runs, or no worker claimed a
    // queue for a while (no worker serves it, or all are busy), which the task instances cannot tell.
    if (run.waiting) reasons.push("The server says: " + run.waiting + ".");
    for (const ti of tis) {
      const label = ti.task_id + (ti.map_index >= 0 ? "[" + ti.map_index + "]" : "");
      if (ti.state === "queued" && ti.try_number > 1) reasons.push(label + " is queued for try " + ti.try_number + ": a worker on queue '" + (ti.queue || "default") + "' claims it once its retry delay has passed.");
      else if (ti.state === "queued") reasons.push(label + " is ready and waits for a worker on queue '" + (ti.queue || "default") + "' to claim it.");
      else if (ti.state === "running") reasons.push(label + " runs on " + (ti.hostname || "a worker") + (ti.lease_expires_at ? ", lease until " + new Date(ti.lease_expires_at).toLocaleTimeString() : "") + ".");
      else if (ti.state === "up_for_retry") reasons.push(label + " failed try " + ti.try_number + " and waits for its next try" + (ti.error ? " (" + ti.error + ")" : "") + ".");
      else if (ti.state === "scheduled" || ti.state === null) {
        const upstream = ((spec.get(ti.task_id) || {}).upstream) || [];
        // An upstream task on another page is not known here: it is not named as done or as waited for.
        const waiting = upstream.filter(u => stateOf.has(u) ? !FINAL.has(stateOf.get(u)) : whole);
        const unseen = whole ? [] : upstream.filter(u => !stateOf.has(u));
        reasons.push(label + (waiting.length ? " waits for upstream " + waiting.join(", ") + "." :
          unseen.length ? " waits for upstream tasks on other pages." : " waits to be queued."));
      }
    }
    if (!tiTotal) reasons.push("The run has no task instances yet.");
    else if (!whole && reasons.length) reasons.push("Read off task instances " + SP.pageRange(tiOffset, PAGE, tiTotal, "") + ": the other pages say the rest.");
    if (!reasons.length) reasons.push("Every task has ended; the outcome is being decided.");
    SP.rerender($("waiting"), JSON.stringify(reasons), () => {
      const list = SP.clear($("waiting"));
      for (const r of reasons) list.append(el("li", { text: r }));
    });
  }

  async function loadTis() {
    const offset = tiOffset;
    const page = (await api(RUN + "/taskInstances?limit=" + PAGE + "&offset=" + offset)).data;
    if (offset !== tiOffset) return;   // another page was chosen meanwhile
    tis = page.task_instances;
    tiTotal = page.total_entries;
    showTis();
  }
  // The run as answered, with its conf and outcome read exactly (SP.parse): they are shown, and a
  // re-trigger sends the conf back.
  function exactRun(answer) {
    const exact = SP.parse(answer.text);
    return Object.assign(answer.data, { conf: exact.conf, outcome: exact.outcome });
  }
  async function loadRun() {
    run = exactRun(await api(RUN));
    showRun();
  }

  function timeline(line) {
    const text = line.state + (line.failed_task ? " at " + line.failed_task : "") + (line.reason ? " (" + line.reason + ")" : "") +
      (line.results ? " — results of " + Object.keys(line.results).join(", ") : "");
    $("timeline").append(el("li", { "data-state": line.state }, SP.time(new Date().toISOString()), SP.stateBadge(line.state), " " + text));
  }

  // The run's NDJSON wait stream: a line at once, one per change of the run's state, the last its outcome.
  // Each line re-reads the run and its task instances, so the page shows what the API answers now.
  async function follow() {
    for (let attempt = 0; attempt < 20; attempt++) {
      let ended = false;
      try {
        let first = attempt === 0;   // the run as the page has just read it: no need to read it again
        await SP.ndjson(RUN + "/wait?interval=1", async (line) => {
          timeline(line);
          if (line.results || line.failed_task || line.reason || line.state === "success" || line.state === "failed") ended = true;
          if (first && run && line.state === run.state && (!ended || run.outcome)) { first = false; return; }
          first = false;
          await Promise.all([loadRun(), loadTis()]).catch(() => {});
        });
      } catch (e) {
        if (SP.leaving()) return;   // the page was left (SP.api)
        if (e.status && e.status < 500) { SP.notice("The live stream stopped: " + (e.detail || e)); return; }
      }
      if (ended) return;
      await new Promise(r => setTimeout(r, 3000));   // the server restarted or a proxy cut the stream
    }
  }

  // Task instances change without a change of the run's state (a task ends, the next is queued), and a
  // run's teardowns go on after its outcome ended the wait stream: the run event stream announces every
  // change of the run, its task instances' included, and the page re-reads the run and its task
  // instances on each (docs/console.md, "Live updates").
  function refreshLive() {
    SP.live({
      dagId: dagId,
      wants: (e) => e.dag_run_id === runId,
      refresh: () => Promise.all([loadRun(), loadTis()]),
      status: $("run-live"),
      // Just read: the stream's "watching" re-reads once, for what changed before it was watched. Read at
      // once as well, and by the wait stream's first line, a run's first page was read four times as the
      // page opened (an outsider's count).
      initial: false,
    });
  }

  cancel.addEventListener("click", async () => {
    const error = $("action-error");
    error.textContent = "";
    if (!confirm("Cancel run " + runId + "? Its outcome becomes failed (cancelled).")) return;
    try { run = exactRun(await api(RUN + "/cancel", { method: "POST" })); showRun(); await loadTis(); }
    catch (e) { SP.showError(error, e); }
  });
  retrigger.addEventListener("click", async () => {
    const error = $("action-error");
    error.textContent = "";
    if (!run) return;   // never a trigger with a conf that was not read (the button is disabled until then)
    try {
      const answer = await api("/api/v2/dags/" + enc(dagId) + "/dagRuns", { method: "POST", json: { logical_date: null, conf: run.conf || {} } });
      location.assign(SP.runUrl(dagId, answer.data.dag_run_id));
    } catch (e) { SP.showError(error, e); }
  });

  // A run that cannot be read has nothing to show or act on: the page says why, and nothing else.
  function unreadable(e) {
    const missing = e.status === 404;
    SP.notice(missing ? "No run " + runId + " of DAG " + dagId + "." : SP.said(e));
    noActions(missing ? "There is no such run to cancel or trigger again." : "The run could not be read: nothing to act on.");
    for (const section of document.querySelectorAll("main section")) section.hidden = true;
  }

  // One call every WAITING_REREAD_S seconds, and only while a task instance waits for a worker.
  function rereadWhileWaiting() {
    setTimeout(() => SP.every(WAITING_REREAD_S, async () => {
      if (run && !run.outcome && tis.some(ti => ti.state === "queued")) await loadRun();
    }), WAITING_REREAD_S * 1000);
  }

  (async () => {
    try { await loadRun(); }
    catch (e) { unreadable(e); return; }
    try { dag = (await api("/api/v2/dags/" + enc(dagId))).data; } catch (e) { dag = null; }
    dagRead = true;
    showActions();
    await loadTis().catch(e => SP.notice(SP.said(e)));
    follow();
    refreshLive();
    rereadWhileWaiting();
  })();
})();
