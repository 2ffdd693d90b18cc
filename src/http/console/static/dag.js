"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;
  const dagId = document.body.dataset.dagId;
  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (let i = 2; i < arguments.length; i++) if (arguments[i]) node.appendChild(arguments[i]);
    return node;
  }

  // Layers by longest path from a root (Kahn's order), then boxes laid out left to right by layer.
  function layout(tasks) {
    const byId = new Map(tasks.map(t => [t.task_id, t]));
    const depth = new Map();
    const indegree = new Map(tasks.map(t => [t.task_id, (t.upstream || []).filter(u => byId.has(u)).length]));
    const down = new Map(tasks.map(t => [t.task_id, []]));
    for (const t of tasks) for (const u of t.upstream || []) if (down.has(u)) down.get(u).push(t.task_id);
    const ready = tasks.filter(t => indegree.get(t.task_id) === 0).map(t => t.task_id);
    ready.forEach(id => depth.set(id, 0));
    while (ready.length) {
      const id = ready.shift();
      for (const d of down.get(id)) {
        depth.set(d, Math.max(depth.get(d) || 0, depth.get(id) + 1));
        indegree.set(d, indegree.get(d) - 1);
        if (indegree.get(d) === 0) ready.push(d);
      }
    }
    const layers = [];
    for (const t of tasks) {
      const d = depth.has(t.task_id) ? depth.get(t.task_id) : 0;
      (layers[d] = layers[d] || []).push(t.task_id);
    }
    return { layers: layers.filter(Boolean), down };
  }

  function drawGraph(dag) {
    const tasks = dag.tasks || [];
    const { layers, down } = layout(tasks);
    const byId = new Map(tasks.map(t => [t.task_id, t]));
    const W = 200, H = 44, GX = 70, GY = 22, PAD = 16;
    const pos = new Map();
    layers.forEach((layer, x) => layer.forEach((id, y) => pos.set(id, { x: PAD + x * (W + GX), y: PAD + y * (H + GY) })));
    const width = PAD * 2 + layers.length * W + (layers.length - 1) * GX;
    const height = PAD * 2 + Math.max(...layers.map(l => l.length)) * (H + GY) - GY;
    const root = svg("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-labelledby": "graph-title graph-desc" });
    root.appendChild(svg("title", { id: "graph-title" })).textContent = "Task graph of " + dag.dag_id;
    const edgesText = [];
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
    root.appendChild(svg("defs", {}, marker));
    for (const [from, tos] of down) for (const to of tos) {
      const a = pos.get(from), b = pos.get(to);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      root.appendChild(svg("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
      edgesText.push(from + " → " + to);
    }
    for (const [id, p] of pos) {
      const t = byId.get(id);
      const kind = [id === dag.result_task ? "result" : "", t.teardown ? "teardown" : ""].join(" ").trim();
      const fit = (text) => text.length > 26 ? text.slice(0, 25) + "…" : text;   // the box holds ~26 characters
      const label = fit(id);
      const g = svg("g", { class: "node " + kind, "data-task-id": id },
        svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }));
      const text = svg("text", { x: p.x + 10, y: p.y + 18 });
      text.textContent = label;
      const sub = svg("text", { x: p.x + 10, y: p.y + 35, class: "sub" });
      const kinds = (t.teardown ? ["teardown"] : []).concat(id === dag.result_task ? ["result"] : [], t.expand ? ["mapped"] : []);
      sub.textContent = fit([...kinds, "queue " + (t.queue || "default")].join(" · "));
      g.appendChild(svg("title", {})).textContent = id + " (" + [...kinds, "queue " + (t.queue || "default")].join(", ") + ")";
      g.appendChild(text); g.appendChild(sub);
      root.appendChild(g);
    }
    const desc = svg("desc", { id: "graph-desc" });
    desc.textContent = tasks.length + " tasks. " + (edgesText.length ? "Edges: " + edgesText.join(", ") + "." : "No edges.");
    root.insertBefore(desc, root.firstChild.nextSibling);
    SP.clear($("dag-graph")).appendChild(root);
  }

  function fact(dl, name, value) { dl.append(el("dt", { text: name }), el("dd", {}, value)); }

  function tasksTable(dag) {
    const tbody = SP.clear($("tasks-table").tBodies[0]);
    for (const t of dag.tasks) {
      const kinds = [];
      if (t.task_id === dag.result_task) kinds.push("result");
      if (t.teardown) kinds.push("teardown");
      if (t.key === true || (t.key == null && !t.teardown)) kinds.push("key");
      if (t.expand) kinds.push("mapped over " + t.expand);
      const assets = [...(t.inlets || []).map(a => "in: " + (a.name || a)), ...(t.outlets || []).map(a => "out: " + (a.name || a))];
      tbody.append(el("tr", {},
        el("th", { scope: "row", text: t.task_id }),
        el("td", { text: (t.upstream || []).join(", ") || "–" }),
        el("td", { text: t.queue || "default" }),
        el("td", { text: String(t.retries || 0) }),
        el("td", { text: t.timeout ? t.timeout + " s" : "–" }),
        el("td", { text: t.trigger_rule || "all_success" }),
        el("td", { text: kinds.join(", ") }),
        el("td", { text: assets.join(", ") || "–" })));
    }
  }

  // --- the trigger form: the conf must be a JSON object before it is sent ----------------------------
  const conf = $("conf"), confStatus = $("conf-status"), button = $("trigger-button");
  let missing = false;   // no such DAG, or one whose spec cannot be read: nothing to trigger
  function checkConf() {
    let ok = true, message = "Valid JSON object.";
    try {
      const value = SP.parse(conf.value || "{}");   // exactly as typed (console.js)
      if (value === null || typeof value !== "object" || Array.isArray(value)) { ok = false; message = "conf must be a JSON object ({…})."; }
    } catch (e) { ok = false; message = "Not valid JSON: " + e.message; }
    conf.setAttribute("aria-invalid", ok ? "false" : "true");
    confStatus.textContent = message;
    confStatus.className = ok ? "help" : "error";
    if (SP.hasScope("runs:write") && !missing) button.disabled = !ok;
    return ok;
  }
  conf.addEventListener("input", checkConf);
  // A conf and run id typed but not yet sent come back after a sign-in (console.js, keepDraft).
  const untouched = conf.value;
  SP.keepDraft("trigger", () => conf.value !== untouched || $("run-id").value ? { conf: conf.value, run_id: $("run-id").value } : null);
  const draft = SP.takeDraft("trigger");
  if (draft) {
    conf.value = draft.conf;
    $("run-id").value = draft.run_id;
    SP.notice("The conf and run id you had typed are back after signing in; nothing was triggered yet.");
  }

  // The API refuses a bad run id with the pattern it failed (a regex): the operator is told the rule in
  // words, and the server's answer follows it. Any other refusal is shown as the server said it.
  const RUN_ID_RULE = "A run id is 1 to 250 characters and cannot contain '/' or control characters.";
  function refusesRunId(e) {
    const fields = e.status === 422 && e.data && Array.isArray(e.data.detail) ? e.data.detail : [];
    return fields.some(d => Array.isArray(d.loc) && d.loc[d.loc.length - 1] === "dag_run_id");
  }
  function showTriggerError(node, e) {
    SP.showError(node, e);
    if (!refusesRunId(e)) return;
    node.textContent = RUN_ID_RULE + " The server answered: " + node.textContent;
    $("run-id").setAttribute("aria-invalid", "true");
    $("run-id").focus();
  }
  $("run-id").addEventListener("input", () => $("run-id").removeAttribute("aria-invalid"));
  SP.gate(button, $("trigger-reason"));
  $("trigger-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("trigger-error");
    error.textContent = "";
    if (!checkConf()) { conf.focus(); return; }
    const body = { logical_date: null, conf: SP.parse(conf.value || "{}") };
    const runId = $("run-id").value.trim();
    if (runId) body.dag_run_id = runId;
    button.disabled = true;
    try {
      const answer = await api("/api/v2/dags/" + enc(dagId) + "/dagRuns", { method: "POST", json: body });
      location.assign(SP.runUrl(dagId, answer.data.dag_run_id));
    } catch (e) { showTriggerError(error, e); button.disabled = false; }
  });

  async function load() {
    let dag;
    try { dag = (await api("/api/v2/dags/" + enc(dagId))).data; }
    catch (e) {
      if (e.status === 404) {   // as the run page does for a missing run: its actions are disabled
        missing = true;
        button.disabled = true;
        $("trigger-reason").textContent = "No DAG " + dagId + " is registered: register it, then trigger it.";
      }
      SP.notice(e.status === 404 ? "No DAG " + dagId + " is registered." : SP.said(e));
      return;
    }
    const dl = SP.clear($("dag-facts"));
    fact(dl, "Spec version", el("code", { text: dag.version }));
    $("dag-runs-link").href = SP.prefix + "/runs?dag_id=" + enc(dagId);
    if (dag.has_import_errors) { unreadable(dl); return; }
    const queues = Array.from(new Set(dag.tasks.map(t => t.queue || "default"))).sort();
    fact(dl, "Queues", queues.join(", "));
    fact(dl, "Result task", dag.result_task || "none (the run's outcome carries no result)");
    fact(dl, "Teardowns", dag.tasks.filter(t => t.teardown).map(t => t.task_id).join(", ") || "none");
    const assets = new Set();
    for (const t of dag.tasks) for (const a of [...(t.inlets || []), ...(t.outlets || [])]) assets.add(typeof a === "string" ? a : a.name);
    fact(dl, "Assets", Array.from(assets).sort().join(", ") || "none");
    drawGraph(dag);
    tasksTable(dag);
    runsThisHour();
  }
  // The server shows a DAG whose stored spec no longer decodes (written by an incompatible release) with
  // has_import_errors and no tasks: say so, rather than showing a DAG without tasks or result task.
  function unreadable(dl) {
    const why = "The stored spec of this DAG's current version cannot be read (written by an incompatible release?). " +
      "Its runs are listed below; register its spec again to run it.";
    fact(dl, "Spec", el("span", { className: "error", text: "cannot be read" }));
    SP.notice(why);
    missing = true;
    button.disabled = true;
    $("trigger-reason").textContent = "The DAG's spec cannot be read: register it again to trigger it.";
    SP.clear($("dag-graph")).append(el("p", { className: "help", text: "No graph: the spec cannot be read." }));
    SP.clear($("tasks-table").tBodies[0]).append(el("tr", {}, el("td", { colspan: 8, text: "The spec cannot be read." })));
    runsThisHour();
  }
  function runsThisHour() {
    const hour = $("dag-hour");
    SP.clear(hour).append("Runs whose run_after is in the last hour: ");
    SP.hourCounts(dagId).then(c => hour.append(SP.countsNode(dagId, c)), e => hour.append(SP.said(e)));
  }
  // The latest runs, re-read when the server announces a change of one of the DAG's runs (re-rendered
  // only when they change).
  async function latestRuns() {
    const runs = (await api("/api/v2/dags/" + enc(dagId) + "/dagRuns?limit=10&order_by=-id")).data.dag_runs;
    const tbody = $("dag-runs-table").tBodies[0];
    SP.rerender(tbody, JSON.stringify(runs), () => {
      SP.clear(tbody);
      if (!runs.length) tbody.append(el("tr", {}, el("td", { colspan: 4, text: "No run yet." })));
      for (const run of runs) {
        tbody.append(el("tr", { "data-run-id": run.dag_run_id },
          el("th", { scope: "row" }, el("a", { href: SP.runUrl(dagId, run.dag_run_id), text: run.dag_run_id })),
          el("td", {}, SP.stateBadge(run.state)),
          el("td", {}, SP.time(run.queued_at)),
          el("td", { text: SP.duration(run.duration) })));
      }
    });
  }

  checkConf();
  load().then(() => SP.live({ dagId: dagId, refresh: latestRuns, status: $("dag-runs-live") }));
})();
