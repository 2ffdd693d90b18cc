"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const error = SP.$("login-error");
  if (params.get("reason")) error.textContent = "Signed out: " + params.get("reason");
  SP.$("token").focus();
  SP.$("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    // "Bearer <token>", as an Authorization header carries it, is the token (an outsider pasted that).
    const value = SP.$("token").value.trim().replace(/^bearer\s+/i, "");
    SP.setToken(value);
    if (!SP.claims()) {
      sessionStorage.removeItem("stateport.token");
      // Three dot-separated parts, the first two base64url JSON: "a.b.c" has the parts and is still none.
      error.textContent = "That is not a JWT: paste the whole token `stateport token api` printed.";
      return;
    }
    try {
      // Any API call checks the token; a token without runs:read (state:admin only) still signs in.
      const answer = await SP.api("/api/v2/dags?limit=1", { noLogin: true, accept: [403] });
      // Only a token the server takes, lacking runs:read, signs in on a 403: the server's own words for
      // that case (a token it refuses outright, "scope must be a space-separated string" say, is refused
      // here too: it signed in, and every page then failed: an outsider's find).
      const detail = answer.data && typeof answer.data.detail === "string" ? answer.data.detail : "";
      if (answer.status === 403 && !detail.startsWith("This token lacks the '")) {
        throw new SP.ApiError(403, answer.data.detail);
      }
      // Lacking runs:read, only state:admin opens a page (State): a worker's token signed in, and every
      // page then re-read in vain every 10 s (an outsider's find).
      if (answer.status === 403 && !SP.hasScope("state:admin")) {
        const has = Array.from(SP.scopes()).join(" ") || "none";
        throw new SP.ApiError(403, "This token has neither the 'runs:read' nor the 'state:admin' scope: the " +
          "console has nothing to show with it (its scopes: " + has + "). Make one with `stateport token api " +
          "--scope runs:read` (add state:admin for the State page).");
      }
    } catch (e) {
      sessionStorage.removeItem("stateport.token");
      SP.showError(error, e);
      return;
    }
    const next = params.get("next");
    // Only a path of this console: never send the operator to another site.
    location.assign(next && next.startsWith(SP.prefix + "/") ? next : SP.prefix + "/dags");
  });
})();
