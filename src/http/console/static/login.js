"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const error = SP.$("login-error");
  if (params.get("reason")) error.textContent = "Signed out: " + params.get("reason");
  SP.$("token").focus();
  SP.$("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = SP.$("token").value.trim();
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
      if (answer.status === 403 && !/scope/.test(answer.data && answer.data.detail)) {
        throw new SP.ApiError(403, answer.data.detail);
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
