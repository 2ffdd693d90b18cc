"""When a token is renewed: the Refreshed-API-Token rule's numbers, shared by the HTTP layer, which renews,
and the CLI, which tells a user minting a token how it will be renewed (without loading the web stack:
a short-lived token aged while ``stateport token api`` imported it)."""

from __future__ import annotations

# Airflow's rule: a token is renewed once at most max(20% of its lifetime, 30 s) remains.
REFRESH_FLOOR_S = 30.0
REFRESH_FRACTION = 0.2
# Stateport's own API tokens are renewed in the second half of their life, not only in Airflow's last
# fifth: a holder that pauses for less than half its token's lifetime never loses it (docs/configuration.md;
# an application calling every 6 minutes on a 10-minute token lost it under Airflow's rule).
API_REFRESH_FRACTION = 0.5
