// Stateport console: what every page shares. The token lives in this tab's sessionStorage and goes with
// every API call as a Bearer token; no cookie is set, so no other site can make the browser act with it.
"use strict";
(function () {
  const KEY = "stateport.token";
  const body = document.body;
  const prefix = body.dataset.prefix || "/ui";

  // Every request of the page ends when the page is left. A browser keeps a page it leaves in its
  // back/forward cache for a minute or so, and with it the page's streams (the run event stream, a wait
  // stream, a state watch), each holding one of the six connections HTTP/1.1 allows per server: after five
  // page changes in one tab, the console's next call (an operator's Cancel) waited for a free one, for up
  // to a minute (an outsider's find). A page brought back from that cache is read again, streams and all.
  const page = new AbortController();
  window.addEventListener("pagehide", () => page.abort());
  window.addEventListener("pageshow", (event) => { if (event.persisted) location.reload(); });
  function pageSignal(signal) { return signal ? AbortSignal.any([signal, page.signal]) : page.signal; }

  function token() { return sessionStorage.getItem(KEY); }
  function setToken(value) { sessionStorage.setItem(KEY, value); }
  function signOut() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(DRAFTS); location.assign(prefix + "/login"); }

  // Unsaved input outlives a sign-in. A token that expires while the operator types (a 401 on any call)
  // sends the page to sign in and back to the same address; what it had typed was lost with the page (an
  // outsider's find). A page names its inputs with keepDraft(name, describe): describe() answers what to
  // keep, or null when nothing is unsaved. On the way out they are kept in this tab's sessionStorage for
  // that address, and the page that comes back to it takes each one once (takeDraft). Signing out drops them.
  const DRAFTS = "stateport.drafts";
  const drafts = new Map();
  function keepDraft(name, describe) { drafts.set(name, describe); }
  function here() { return location.pathname + location.search; }
  function saveDrafts() {
    const fields = {};
    for (const [name, describe] of drafts) {
      const kept = describe();
      if (kept !== null && kept !== undefined) fields[name] = kept;
    }
    if (Object.keys(fields).length) sessionStorage.setItem(DRAFTS, JSON.stringify({ page: here(), fields: fields }));
  }
  function takeDraft(name) {
    let kept = null;
    try { kept = JSON.parse(sessionStorage.getItem(DRAFTS) || "null"); } catch (e) { /* none */ }
    if (!kept || kept.page !== here() || !kept.fields || !Object.hasOwn(kept.fields, name)) return null;
    const draft = kept.fields[name];
    delete kept.fields[name];
    if (Object.keys(kept.fields).length) sessionStorage.setItem(DRAFTS, JSON.stringify(kept));
    else sessionStorage.removeItem(DRAFTS);
    return draft;
  }

  // The token's claims, read only to show what it allows: the server checks every call itself.
  function claims() {
    const t = token();
    if (!t) return null;
    try {
      const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
    } catch (e) { return null; }
  }
  function scopes() {
    const c = claims();
    return new Set(c && typeof c.scope === "string" ? c.scope.split(" ").filter(Boolean) : []);
  }
  function hasScope(scope) { return scopes().has(scope); }

  function toLogin(reason) {
    saveDrafts();
    const next = location.pathname + location.search;
    const q = new URLSearchParams({ next: next });
    if (reason) q.set("reason", reason);
    location.assign(prefix + "/login?" + q.toString());
  }

  // data: the error's body as answered, for a page that says more than the detail (a 422's fields).
  class ApiError extends Error {
    constructor(status, detail, data) { super(detail); this.status = status; this.detail = detail; this.data = data; }
  }

  function detailOf(status, data) {
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) return data.detail.map(d => d.msg + " (" + (d.loc || []).join(".") + ")").join("; ");
    if (data && data.detail && data.detail.message) return data.detail.message;
    return "HTTP " + status;
  }

  // A call of the public API. Answers {status, headers, data}; throws ApiError for 4xx/5xx unless the
  // status is in opts.accept. A 401 sends the operator to sign in again.
  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ "Authorization": "Bearer " + (token() || "") }, opts.headers || {});
    const init = { method: opts.method || "GET", headers: headers, signal: pageSignal(opts.signal) };
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = stringify(opts.json);
    }
    const response = await fetch(path, init);
    keepRefreshed(response);
    if (opts.raw) return response;
    const text = await response.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch (e) { data = text; } }
    if (response.status === 401 && !opts.noLogin) { toLogin(detailOf(401, data)); throw new ApiError(401, detailOf(401, data)); }
    if (response.status >= 400 && !(opts.accept || []).includes(response.status)) {
      throw new ApiError(response.status, detailOf(response.status, data), data);
    }
    // text: the answer as sent, for the values that must be read exactly (parse()).
    return { status: response.status, headers: response.headers, data: data, text: text };
  }

  // The server renews a token that is near its expiry while it is in use (Refreshed-API-Token).
  function keepRefreshed(response) {
    const fresh = response.headers.get("Refreshed-API-Token");
    if (fresh) setToken(fresh);
  }

  // An NDJSON stream (the run's wait stream), read line by line as it arrives; onLine(object) per line.
  async function ndjson(path, onLine, signal) {
    const response = await api(path, { raw: true, signal: signal, headers: { "Accept": "application/x-ndjson" } });
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try { detail = detailOf(response.status, await response.json()); } catch (e) { /* keep the status */ }
      if (response.status === 401) toLogin(detail);
      throw new ApiError(response.status, detail);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line) onLine(JSON.parse(line));
      }
    }
  }

  // A Server-Sent Events stream read with fetch(), so that the token goes in the Authorization header: an
  // EventSource cannot send one, and a token in the URL would be kept by access logs and proxies.
  // onEvent(name, data, id, text) per event ("comment" with its text for a ": ..." line; data parsed as
  // JSON when it is JSON; text the data as sent, for parse()). Answers when the stream ends; throws ApiError for a refused request.
  // A stream that says nothing for this long is taken for lost: the server says ": heartbeat" when idle
  // (every 15 s by default), but a network that drops everything (a cable, a VPN) ends nothing, and the
  // page said "Live" while its server could not be reached (an outsider's find).
  const SILENT_MS = window.STATEPORT_SILENT_MS || 40000;  // a test shortens it (tests/e2e/test_console.py)
  async function silentFor(reader, ms) {
    let timer;
    const silent = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("no word from the server for " + ms / 1000 + " s")), ms);
    });
    try { return await Promise.race([reader.read(), silent]); }
    catch (e) { reader.cancel().catch(() => {}); throw e; }
    finally { clearTimeout(timer); }
  }

  async function sse(path, onEvent, signal, headers) {
    const response = await api(path, { raw: true, signal: signal, headers: Object.assign({ "Accept": "text/event-stream" }, headers || {}) });
    if (!response.ok) {
      let detail = "HTTP " + response.status;
      try { detail = detailOf(response.status, await response.json()); } catch (e) { /* keep the status */ }
      if (response.status === 401) toLogin(detail);
      throw new ApiError(response.status, detail);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "", name = "message", data = [], id = null;
    for (;;) {
      const { value, done } = await silentFor(reader, SILENT_MS);
      if (done) return;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + (buffered.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (data.length) {
            const text = data.join("\n");
            let parsed = text;
            try { parsed = JSON.parse(text); } catch (e) { /* not JSON: the text */ }
            // The stream renewed its token and goes on under it: the console's from now on.
            if (name === "token" && parsed && parsed.token) setToken(parsed.token);
            else onEvent(name, parsed, id, text);
          }
          name = "message"; data = [];
          continue;
        }
        if (line.startsWith(":")) { onEvent("comment", line.slice(1).trim(), null); continue; }
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      // A hostile or broken server cannot make the page hold an endless line.
      if (buffered.length > 1 << 20) throw new ApiError(0, "an event over 1 MiB: the stream was dropped");
    }
  }

  // Live updates pushed by the server: the run event stream (GET /api/v2/dagRuns/events), which carries
  // every change of a run (its state, or its task instances) from any server process. refresh() re-reads
  // what the page shows: once at start, on each relevant event (coalesced: at most one re-read at a time,
  // and bursts of events become one), after a "recheck" (events may have been missed) and after each
  // reconnect. Only while the stream is down does the page poll, every `fallback` seconds (default 10),
  // and it reconnects with a growing delay (1 s to 30 s). opts: dagId (only its runs), wants(event)
  // (is this event about what the page shows?), refresh, status (a node that says whether the page is live),
  // gap (seconds at least between two re-reads, for a page whose re-read costs many calls), initial
  // (false: the page has read what it shows already).
  function live(opts) {
    const fallback = opts.fallback || 10;
    let running = false, again = false, down = true;
    // What the status says of the stream, and whether the last re-read failed: said after it, since the
    // DAG and run pages show a failed re-read nowhere else, and read "Reconnecting" while what they showed
    // had stopped changing (an outsider's find).
    let current = "", failure = "";
    function show() { if (opts.status) opts.status.textContent = current + failure; }
    function say(text) { current = text; show(); }
    async function refreshNow() {
      if (running) { again = true; return; }
      running = true;
      try { await opts.refresh(); failure = ""; show(); }
      catch (e) {
        if (!page.signal.aborted) { failure = " The last re-read failed: " + said(e); show(); }
      }
      finally { running = false; }
      if (again) { again = false; setTimeout(refreshNow, (opts.gap || 0) * 1000); }
    }
    let timer = null;
    function kick() { if (!timer) timer = setTimeout(() => { timer = null; refreshNow(); }, 200); }
    if (opts.initial !== false) refreshNow();
    // The slow re-read while the stream is down starts after one period (the page has just been read).
    setTimeout(() => every(fallback, async () => { if (down) await refreshNow(); }), fallback * 1000);
    const path = "/api/v2/dagRuns/events" + (opts.dagId ? "?dag_id=" + enc(opts.dagId) : "");
    (async () => {
      let delay = 1;
      for (;;) {
        try {
          await sse(path, (name, data) => {
            if (name === "comment" && data === "watching") {
              down = false; delay = 1; kick();
              say("Live: updated as the server announces changes.");
            } else if (name === "run") {
              if (!opts.wants || opts.wants(data)) kick();
            } else if (name === "recheck") {
              kick();
            }
          });
        } catch (e) {
          if (page.signal.aborted) return;   // the page was left: its requests end with it
          // Refused for good (no token, no scope, or a DAG that is not registered): no point retrying.
          if (e.status === 401 || e.status === 403 || e.status === 404) { down = true; say("Not live: " + (e.detail || e) + ". Re-read every " + fallback + " seconds."); return; }
        }
        down = true;
        say("Reconnecting to the server's live updates; re-read every " + fallback + " seconds meanwhile.");
        await new Promise(r => setTimeout(r, delay * 1000));
        delay = Math.min(delay * 2, 30);
      }
    })();
  }

  // What a pager says of the page at `offset` (of `size`) in `total` items; `none` when there are none.
  // An offset past the end (a link, an edited address) says so: it read "100001–28 of 28".
  function pageRange(offset, size, total, none) {
    if (!total) return none;
    if (offset >= total) return "nothing from " + (offset + 1) + ": there are " + total;
    return (offset + 1) + "–" + Math.min(total, offset + size) + " of " + total;
  }

  // Where a pager's "previous" goes from `offset`: the page before, or from past the end the last page
  // (from offset 1,000,000 of 35 it stepped back one page at a time: an outsider's find).
  function previousOffset(offset, size, total) {
    if (offset >= total) return total ? Math.floor((total - 1) / size) * size : 0;
    return Math.max(0, offset - size);
  }

  // --- DOM helpers -----------------------------------------------------------------------------------
  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (let i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(c => append(node, c)); return; }
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function $(id) { return document.getElementById(id); }

  function stateBadge(state) {
    const s = state || "none";
    return el("span", { className: "state state-" + s, "data-state": s, text: s.replace(/_/g, " ") });
  }
  function time(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    return el("time", { datetime: iso, title: iso, text: d.toLocaleString() });
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    if (seconds < 7200) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  // --- JSON that keeps operators' numbers exactly --------------------------------------------------------
  // JSON.parse turns 9007199254740993 into 9007199254740992, 1E+2 into 100 and -0.0 into 0: a conf, a
  // result or a state value shown, edited and saved through it would change without the operator
  // touching it. So the console reads and writes those values with this small parser (written here
  // because the console has no build step and no dependency): a number that a JS number would not print
  // back exactly stays a RawNumber holding its text, and pretty() and stringify() write that text back.
  class RawNumber { constructor(text) { this.text = text; } }
  const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  function parse(text) {
    let i = 0;
    const fail = (what) => { throw new SyntaxError(what + " at position " + i); };
    const space = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
    const take = (pattern) => { pattern.lastIndex = i; const m = pattern.exec(text); if (!m) fail("Unexpected token"); i = pattern.lastIndex; return m[0]; };
    const expect = (c) => { space(); if (text[i] !== c) fail("Expected '" + c + "'"); i++; };
    function value() {
      space();
      const c = text[i];
      if (c === "{") {
        i++; const o = {};
        space(); if (text[i] === "}") { i++; return o; }
        for (;;) {
          space(); const key = JSON.parse(take(STRING));
          expect(":");
          // defineProperty: a key named __proto__ is a key, as JSON.parse makes it, not the prototype.
          Object.defineProperty(o, key, { value: value(), enumerable: true, writable: true, configurable: true });
          space(); if (text[i] === ",") { i++; continue; }
          expect("}"); return o;
        }
      }
      if (c === "[") {
        i++; const a = [];
        space(); if (text[i] === "]") { i++; return a; }
        for (;;) { a.push(value()); space(); if (text[i] === ",") { i++; continue; } expect("]"); return a; }
      }
      if (c === '"') return JSON.parse(take(STRING));
      for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
        if (text.startsWith(word, i)) { i += word.length; return v; }
      }
      const token = take(NUMBER);
      const n = Number(token);
      if (!isFinite(n)) fail("Number out of range (" + token + ")");
      return String(n) === token ? n : new RawNumber(token);
    }
    const out = value();
    space();
    if (i !== text.length) fail("Unexpected text after the JSON value");
    return out;
  }
  function write(value, indent, depth) {
    if (value instanceof RawNumber) return value.text;
    if (value === null || typeof value !== "object") return JSON.stringify(value);
    const inner = indent ? "\n" + indent.repeat(depth + 1) : "", outer = indent ? "\n" + indent.repeat(depth) : "";
    const sep = indent ? ": " : ":";
    const items = Array.isArray(value)
      ? value.map(v => write(v, indent, depth + 1))
      : Object.keys(value).map(k => JSON.stringify(k) + sep + write(value[k], indent, depth + 1));
    if (!items.length) return Array.isArray(value) ? "[]" : "{}";
    const body = inner + items.join("," + inner) + outer;
    return Array.isArray(value) ? "[" + body + "]" : "{" + body + "}";
  }
  function pretty(value) { return write(value, "  ", 0); }
  function stringify(value) { return write(value, "", 0); }
  function enc(s) { return encodeURIComponent(s); }
  function dagUrl(dagId) { return prefix + "/dag?dag_id=" + enc(dagId); }
  function runUrl(dagId, runId) { return prefix + "/run?dag_id=" + enc(dagId) + "&run_id=" + enc(runId); }
  function apiRun(dagId, runId) { return "/api/v2/dags/" + enc(dagId) + "/dagRuns/" + enc(runId); }

  function notice(message) {
    const n = $("notice");
    if (!message) { n.hidden = true; n.textContent = ""; return; }
    n.textContent = message; n.hidden = false;
  }
  function showError(node, error) {
    node.textContent = error ? (error.status ? error.status + ": " : "") + said(error) : "";
  }

  // What went wrong, in words: the server's, or, when no answer came (fetch's TypeError), that the server
  // cannot be reached. "TypeError: Failed to fetch" was shown in the tables (an outsider's find).
  function said(error) {
    if (error && error.detail) return error.detail;
    if (error instanceof TypeError) return "The server cannot be reached (it may be restarting): the page tries again.";
    return (error && error.message) || String(error);
  }

  // Buttons marked data-scope are disabled, with the reason next to them, when the token lacks the scope.
  // The server refuses the call anyway; this only says so before the operator tries.
  function gate(button, reasonNode) {
    const scope = button.dataset.scope;
    if (!scope || hasScope(scope)) return true;
    button.disabled = true;
    const reason = "Needs a token with the '" + scope + "' scope.";
    button.title = reason;
    if (reasonNode) {
      reasonNode.textContent = reason;
      if (!reasonNode.id) reasonNode.id = "reason-" + Math.random().toString(36).slice(2);
      button.setAttribute("aria-describedby", reasonNode.id);
    }
    return false;
  }

  function header() {
    const who = $("who");
    const c = claims();
    if (!c) return;
    const list = Array.from(scopes()).join(" ") || "no scopes";
    const exp = c.exp ? new Date(c.exp * 1000).toLocaleTimeString() : "?";
    append(who, el("span", { text: "Token " + (c.sub || "") + ": " + list, title: "Expires " + exp + " unless renewed by use" }));
    append(who, el("button", { type: "button", onclick: signOut, text: "Sign out" }));
  }

  // Re-renders `node` with render() only when what it shows changed (`signature`), and gives the focus
  // back to the same link or button afterwards: a refresh must not pull a keyboard user out of a table.
  const shown = new WeakMap();
  // A node whose content was replaced otherwise (an error written into it): its next rerender draws again.
  // Kept, the data read after a reconnect was the same as before the outage and was never drawn: the page
  // said "Live" over the error (an outsider's find).
  function forget(node) { shown.delete(node); }
  function rerender(node, signature, render) {
    if (shown.get(node) === signature) return false;
    shown.set(node, signature);
    const active = document.activeElement;
    const inside = active && node.contains(active);
    const mark = inside ? (active.getAttribute("href") || active.getAttribute("aria-label") || active.textContent) : null;
    render();
    if (mark !== null) {
      const again = Array.from(node.querySelectorAll("a, button")).find(e =>
        (e.getAttribute("href") || e.getAttribute("aria-label") || e.textContent) === mark);
      if (again) again.focus();
    }
    return true;
  }

  // Runs fn now and then every `seconds` while the tab is visible: a slow refresh where no stream exists.
  function every(seconds, fn) {
    let timer = null;
    const tick = async () => {
      timer = null;
      if (document.visibilityState === "visible") { try { await fn(); } catch (e) { /* shown by fn */ } }
      timer = setTimeout(tick, seconds * 1000);
    };
    tick();
    return () => { if (timer) clearTimeout(timer); };
  }

  const RUN_STATES = ["queued", "running", "success", "failed"];
  // Runs whose run_after is in the last hour (when they were triggered, unless the trigger named another
  // time: the API filters runs by nothing closer to their creation), counted per state (one count-only
  // query per state).
  async function hourCounts(dagId) {
    const since = new Date(Date.now() - 3600 * 1000).toISOString();
    const counts = await Promise.all(RUN_STATES.map(async (s) => {
      const r = await api("/api/v2/dags/" + enc(dagId) + "/dagRuns?limit=0&state=" + s + "&run_after_gte=" + enc(since));
      return [s, r.data.total_entries];
    }));
    return counts;
  }
  function countsNode(dagId, counts) {
    return el("span", { className: "counts" }, counts.map(([s, n]) =>
      el("a", { href: prefix + "/runs?dag_id=" + enc(dagId) + "&state=" + s + "&since=3600", "aria-label": n + " " + s },
        stateBadge(s), " " + n)));
  }


  window.SP = {
    leaving: () => page.signal.aborted,
    pageRange: pageRange,
    previousOffset: previousOffset,
    prefix, token, setToken, signOut, keepDraft, takeDraft, claims, scopes, hasScope, api, ndjson, ApiError, el, append, clear, $,
    stateBadge, hourCounts, countsNode, RUN_STATES, time, duration, pretty, parse, stringify, enc, dagUrl, runUrl, apiRun, notice, showError, said, forget, gate, every, rerender,
    sse, live,
  };

  // At phone width tables show each row as a card (console.css); every cell is labelled with its column.
  function labelCells(table) {
    const heads = table.tHead ? Array.from(table.tHead.rows[0].cells).map(c => c.textContent.trim()) : [];
    for (const tbody of table.tBodies) for (const row of tbody.rows) {
      Array.from(row.cells).forEach((cell, i) => { if (heads[i] && !cell.hasAttribute("colspan")) cell.dataset.label = heads[i]; });
    }
  }
  for (const table of document.querySelectorAll("table")) {
    labelCells(table);
    new MutationObserver(() => labelCells(table)).observe(table, { childList: true, subtree: true });
  }

  // The sign-in page needs no token, nor do the pages saying that an address names nothing or that a form
  // was sent without the script (they read nothing: signing in would only bring the operator back to them).
  if (body.dataset.page === "invalid" || body.dataset.page === "noscript") {
    if (token()) header();
  } else if (body.dataset.page !== "login") {
    if (!token()) { toLogin(); return; }
    header();
  }
})();
