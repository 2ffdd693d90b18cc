"use strict";
(function () {
  if (!SP.token()) return;
  const { el, $, api, enc } = SP;
  const PAGE = 50;
  const admin = SP.hasScope("state:admin");
  let kind = "task", base = null, query = "", offset = 0, current = null;   // current: {key, etag, entry, shown}
  let scopeLabel = "";   // the listed scope in words: the delete confirmation names it
  let watched = null;   // the raw admin scope route the page watches (an AbortController stops it)

  if (!admin) {
    $("state-reason").textContent = "Reading and editing state needs a token with the 'state:admin' scope; the server refuses the calls without it.";
  }
  for (const id of ["save-button", "delete-button"]) SP.gate($(id), $("value-reason"));
  for (const button of document.querySelectorAll("form.filters button[data-scope]")) {
    if (!SP.gate(button, null)) button.setAttribute("aria-describedby", "state-reason");
  }

  function selectTab(which) {
    kind = which;
    $("tab-task").setAttribute("aria-pressed", String(which === "task"));
    $("tab-asset").setAttribute("aria-pressed", String(which === "asset"));
    $("task-form").hidden = which !== "task";
    $("asset-form").hidden = which !== "asset";
  }
  $("tab-task").addEventListener("click", () => selectTab("task"));
  $("tab-asset").addEventListener("click", () => selectTab("asset"));

  // A key may hold "/": each segment is encoded, the slashes stay (the routes take the rest of the path).
  function keyPath(key) { return key.split("/").map(enc).join("/"); }
  function keyUrl(key) { return base + "/" + keyPath(key) + query; }

  // --- suggestions for the task form, from the API ----------------------------------------------------
  function fill(listId, values) { const l = SP.clear($(listId)); for (const v of values) l.append(el("option", { value: v })); }
  api("/api/v2/dags?limit=100").then(a => fill("s-dag-ids", a.data.dags.map(d => d.dag_id)), () => {});
  api("/api/v2/assets?limit=100").then(a => fill("s-asset-names", a.data.assets.map(x => x.name)), () => {});
  $("s-dag").addEventListener("change", () => {
    const dagId = $("s-dag").value.trim();
    if (!dagId) return;
    api("/api/v2/dags/" + enc(dagId)).then(a => fill("s-task-ids", a.data.tasks.map(t => t.task_id)), () => {});
    api("/api/v2/dags/" + enc(dagId) + "/dagRuns?limit=50&order_by=-id").then(a => fill("s-run-ids", a.data.dag_runs.map(r => r.dag_run_id)), () => {});
  });

  async function listKeys() {
    const error = $("state-error");
    error.textContent = "";
    const prefix = (kind === "task" ? $("s-prefix") : $("s-aprefix")).value;
    const q = new URLSearchParams({ limit: PAGE, offset: offset });
    if (prefix) q.set("prefix", prefix);
    if (kind === "task") q.set("map_index", $("s-map").value || "-1");
    const listed = base;
    if (!listed) return;
    let answer;
    try { answer = await api(listed + "?" + q.toString()); }
    catch (e) { if (base === listed) SP.showError(error, e); return; }
    if (base !== listed) return;   // another scope was chosen meanwhile
    const entries = answer.data.task_state_store || answer.data.asset_state_store || [];
    const tbody = SP.clear($("keys-table").tBodies[0]);
    $("keys-caption").textContent = answer.data.total_entries + " key(s)" + (prefix ? " starting with '" + prefix + "'" : "");
    for (const entry of entries) {
      tbody.append(el("tr", { "data-key": entry.key },
        el("th", { scope: "row" }, el("a", { href: "#value-h", text: entry.key, onclick: (e) => { e.preventDefault(); openKey(entry.key); } })),
        el("td", {}, SP.time(entry.updated_at)),
        el("td", {}, SP.time(entry.expires_at))));
    }
    const nav = SP.clear($("keys-pager"));
    const total = answer.data.total_entries;
    nav.append(
      el("button", { type: "button", text: "Previous", disabled: offset === 0, onclick: () => { offset = SP.previousOffset(offset, PAGE, total); listKeys(); } }),
      el("span", { text: SP.pageRange(offset, PAGE, total, "") }),
      el("button", { type: "button", text: "Next", disabled: offset + PAGE >= total, onclick: () => { offset += PAGE; listKeys(); } }));
  }

  // draft: an edit kept through a sign-in (below), put back over the value as loaded.
  async function openKey(key, draft) {
    const error = $("value-error");
    error.textContent = "";
    const listed = base;
    let answer;
    try { answer = await api(keyUrl(key)); }
    catch (e) { if (base === listed) SP.showError($("state-error"), e); return; }
    if (base !== listed) return;   // another scope was chosen meanwhile
    // parse(): the value exactly as stored (a JS number would change 9007199254740993; console.js).
    current = { key: key, etag: answer.headers.get("ETag"), entry: SP.parse(answer.text) };
    $("value-section").hidden = false;
    $("value-key").textContent = key;
    showValue("Loaded version " + (current.etag || "?") + ".");
    if (draft) putBack(draft);
    $("value-text").focus();
  }

  // An edit not yet saved when the token expired comes back after the sign-in (console.js, keepDraft). It
  // keeps the version it was made on: Save sends that as If-Match, so a write made in between is refused
  // (412), never overwritten.
  SP.keepDraft("value", () => current && $("value-text").value !== current.shown ?
    { key: current.key, etag: current.etag, text: $("value-text").value } : null);
  let draft = SP.takeDraft("value");
  function resumeDraft() {
    if (!draft) return;
    const kept = draft;
    draft = null;
    openKey(kept.key, kept);
  }
  function putBack(kept) {
    const moved = kept.etag !== current.etag;
    $("value-text").value = kept.text;
    $("value-text").dispatchEvent(new Event("input"));
    $("value-status").textContent = "Your unsaved edit of version " + kept.etag + " is back after signing in; Save sends it." +
      (moved ? " The value changed on the server since (now version " + current.etag + "): saving would be refused; Reload to see it." : "");
    current.etag = kept.etag;
  }

  function showFacts() {
    const dl = SP.clear($("value-facts"));
    dl.append(el("dt", { text: "Version" }), el("dd", { text: current.etag || "–" }),
      el("dt", { text: "Updated" }), el("dd", {}, SP.time(current.entry.updated_at)),
      el("dt", { text: "Expires" }), el("dd", {}, current.entry.expires_at ? SP.time(current.entry.expires_at) : "never"));
  }
  // A write answers only the new version (ETag), not when it was written: the entry is read again for
  // its "Updated" (and expiry). Only the facts of the version saved are taken; a newer one is the watch's.
  async function refreshFacts(saved) {
    let answer;
    try { answer = await api(keyUrl(saved.key)); } catch (e) { return; }   // the save stands; facts as they were
    if (current !== saved || answer.headers.get("ETag") !== saved.etag) return;
    const entry = SP.parse(answer.text);
    saved.entry = Object.assign({}, saved.entry, { updated_at: entry.updated_at, expires_at: entry.expires_at });
    showFacts();
  }
  function showValue(status) {
    current.shown = SP.pretty(current.entry.value);
    $("value-text").value = current.shown;
    $("value-text").setAttribute("aria-invalid", "false");
    $("value-status").textContent = status;
    showFacts();
  }

  // --- live: the scope's prefix watch ---------------------------------------------------------------
  // The operators' state routes take no watch; the raw admin routes (/api/v2/state-store/..., the same
  // state:admin scope) do, through the same code as the Execution API's (docs/api.md, "Watching a key").
  // One stream per listed scope: each event names a key under the listed prefix and carries its entry
  // (put) or says it is gone (delete). The shown key's value follows it unless the operator is editing
  // it; then the page says that the server's value moved on (a save would be refused with 412).
  let relist = null;
  function onKeyEvent(name, data) {
    if (!relist) relist = setTimeout(() => { relist = null; listKeys(); }, 300);
    if (!current || !data || data.key !== current.key) return;
    const editing = $("value-text").value !== current.shown;
    if (name === "delete") {
      $("value-status").textContent = "The key was " + (data.reason || "deleted") + " on the server.";
      return;
    }
    const etag = '"' + data.version + '"';
    if (etag === current.etag) return;
    if (editing) {
      $("value-status").textContent = "Changed on the server: now version " + etag + ". Saving your edit would be refused; Reload to see it.";
      return;
    }
    current.etag = etag;
    current.entry = { key: data.key, value: data.value, updated_at: data.updated_at, expires_at: data.expires_at === undefined ? current.entry.expires_at : data.expires_at };
    showValue("Updated live: version " + etag + ".");
  }
  function watchScope(route, prefix) {
    if (watched) watched.abort();
    const control = new AbortController();
    watched = control;
    const status = $("state-live");
    (async () => {
      let delay = 1;
      while (!control.signal.aborted) {
        try {
          await SP.sse(route + (prefix ? "?prefix=" + enc(prefix) : ""), (name, data, id, text) => {
            if (name === "comment" && data === "watching") {
              delay = 1;
              status.textContent = "Live: keys and the shown value follow the server's changes.";
              // Changes made while disconnected are not replayed: re-read what is shown.
              listKeys();
              if (current && $("value-text").value === current.shown) openKey(current.key);
            } else if (name === "put" || name === "delete") onKeyEvent(name, SP.parse(text));
          }, control.signal);
        } catch (e) {
          if (control.signal.aborted || SP.leaving()) return;
          if (delay === 1) listKeys();   // the keys are listed (or the reason they cannot be) even so
          if (e.status && e.status < 500) { status.textContent = "Not live: " + (e.detail || e) + ". Use Reload."; return; }
        }
        if (control.signal.aborted) return;
        status.textContent = "Reconnecting to the server's live updates…";
        await new Promise(r => setTimeout(r, delay * 1000));
        delay = Math.min(delay * 2, 30);
      }
    })();
  }
  function seg(s) { return enc(s); }   // "/" inside an id is sent as %2F: the raw routes keep it in its segment

  $("value-text").addEventListener("input", () => {
    try { SP.parse($("value-text").value); $("value-text").setAttribute("aria-invalid", "false"); $("value-status").textContent = "Valid JSON."; }
    catch (e) { $("value-text").setAttribute("aria-invalid", "true"); $("value-status").textContent = "Not valid JSON: " + e.message; }
  });

  function refused(e) {
    if (e.status === 412) return "Refused: the value changed since you loaded version " + current.etag + ". Reload to see the current value, then edit again.";
    return null;
  }

  // An edit is sent with If-Match: the version loaded. A write made in between makes the server answer 412.
  $("value-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("value-error");
    error.textContent = "";
    let value;
    try { value = SP.parse($("value-text").value); } catch (e) { error.textContent = "Not valid JSON: " + e.message; return; }
    if (value === null) { error.textContent = "null cannot be stored: delete the key instead."; return; }
    const headers = { "If-Match": current.etag };
    try {
      let answer;
      if (kind === "task") answer = await api(keyUrl(current.key), { method: "PATCH", headers: headers, json: { value: value } });
      else answer = await api(keyUrl(current.key), { method: "PUT", headers: headers, json: { value: value, expires_at: current.entry.expires_at } });
      current.etag = answer.headers.get("ETag") || current.etag;
      current.entry = Object.assign({}, current.entry, { value: value });
      current.shown = $("value-text").value;
      $("value-status").textContent = "Saved: now version " + current.etag + ".";
      showFacts();
      listKeys();
      await refreshFacts(current);
    } catch (e) { error.textContent = refused(e) || ((e.status ? e.status + ": " : "") + SP.said(e)); }
  });
  $("delete-button").addEventListener("click", async () => {
    const error = $("value-error");
    error.textContent = "";
    if (!confirm("Delete key " + current.key + " of " + scopeLabel + "?")) return;
    try {
      await api(keyUrl(current.key), { method: "DELETE", headers: { "If-Match": current.etag } });
      $("value-section").hidden = true;
      current = null;
      listKeys();
    } catch (e) { error.textContent = refused(e) || ((e.status ? e.status + ": " : "") + SP.said(e)); }
  });
  $("reload-button").addEventListener("click", () => current && openKey(current.key));

  // Before another scope is looked up, the one shown goes: its keys, its value and its watch. A lookup
  // that fails (an unknown asset) must not leave the previous scope's key open, with Save and Delete
  // acting on it under the new scope's name (an outsider's find).
  function leaveScope() {
    if (watched) { watched.abort(); watched = null; }
    base = null;
    scopeLabel = "";
    current = null;
    offset = 0;
    $("value-section").hidden = true;
    SP.clear($("keys-table").tBodies[0]);
    SP.clear($("keys-pager"));
    $("keys-caption").textContent = "Choose a task or an asset";
    $("state-live").textContent = "";
    if (relist) { clearTimeout(relist); relist = null; }
    $("state-error").textContent = "";
  }

  $("task-form").addEventListener("submit", (event) => {
    event.preventDefault();
    leaveScope();
    const f = event.target.elements;
    scopeLabel = "task " + [f.dag_id.value.trim(), f.run_id.value.trim(), f.task_id.value.trim()].join(" / ") +
      " (map index " + (f.map_index.value || "-1") + ")";
    base = "/api/v2/dags/" + enc(f.dag_id.value.trim()) + "/dagRuns/" + enc(f.run_id.value.trim()) +
      "/taskInstances/" + enc(f.task_id.value.trim()) + "/state-store";
    query = "?map_index=" + enc(f.map_index.value || "-1");
    // The scope in the address, as a run's link gives it: a reload, back/forward or a sign-in after the token
    // expired comes back to it (the Asset tab's was lost: an outsider's find).
    history.replaceState(null, "", "?" + new URLSearchParams({
      dag_id: f.dag_id.value.trim(), run_id: f.run_id.value.trim(), task_id: f.task_id.value.trim(),
      map_index: f.map_index.value || "-1" }));
    watchScope("/api/v2/state-store/task/" + [f.dag_id.value.trim(), f.run_id.value.trim(), f.task_id.value.trim(), f.map_index.value || "-1"].map(seg).join("/"), $("s-prefix").value);
    resumeDraft();
  });
  $("asset-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    leaveScope();
    const name = $("s-asset").value.trim();
    let found;
    try { found = await assetNamed(name); } catch (e) { SP.showError($("state-error"), e); return; }
    if (!found) { $("state-error").textContent = "No asset is named " + name + "."; return; }
    base = "/api/v2/assets/" + found.id + "/state-store";
    query = "";
    scopeLabel = "asset " + name;
    history.replaceState(null, "", "?" + new URLSearchParams({ asset: name }));
    watchScope("/api/v2/state-store/asset/" + seg(name), $("s-aprefix").value);
    resumeDraft();
  });

  // The asset named exactly `name`, or null. The listing's name_pattern is a case-insensitive substring
  // search with SQL LIKE wildcards (`\` escapes one): escaped, it answers every asset whose name holds this
  // one (a `|` or `~` in it widens the search further), and the exact name is looked for on every page.
  // Looked for on the first page only, with `\`, `%` and `_` unescaped, an asset named g\back, or bulk
  // after 100 assets named abulk..., was "not named" (an outsider's find).
  // A `|` in the name ORs terms (and over 100 of them are refused): the search is then by the name's
  // longest part between them, which the name holds (an outsider's find).
  async function assetNamed(name) {
    const part = name.split("|").map(p => p.trim()).reduce((a, b) => b.length > a.length ? b : a, "");
    const pattern = enc((part || name).replace(/[\\%_]/g, "\\$&"));
    for (let offset = 0; ; offset += 100) {
      const page = (await api("/api/v2/assets?limit=100&only_active=false&order_by=id&name_pattern=" + pattern + "&offset=" + offset)).data;
      const found = page.assets.find(a => a.name === name);
      if (found) return found;
      if (page.assets.length < 100) return null;
    }
  }

  // Opened from a run's task instance: the task form is filled in and listed at once.
  const params = new URLSearchParams(location.search);
  if (params.get("dag_id") && params.get("run_id") && params.get("task_id")) {
    $("s-dag").value = params.get("dag_id");
    $("s-run").value = params.get("run_id");
    $("s-task").value = params.get("task_id");
    $("s-map").value = params.get("map_index") || "-1";
    $("task-form").requestSubmit();
  } else if (params.get("asset")) {
    selectTab("asset");
    $("s-asset").value = params.get("asset");
    $("asset-form").requestSubmit();
  }
})();
