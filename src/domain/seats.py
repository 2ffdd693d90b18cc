"""The long waits one server process holds at once, in all and per caller.

Every request that waits for something to happen holds a seat while it waits: outcome long-polls and wait
streams (parked or not), trigger-and-wait, run event streams, state key long-polls and watch streams, and
workers' claim and stop polls that wait (``wait_s`` > 0).
A seat is memory and a socket, both finite, so a process holds at most ``limit`` of them
(``STATEPORT_MAX_WAITERS``; past it, 503 ``overloaded``: another process, or this one a moment later, can
take the wait). And a process must not let one caller take them all: with one token holding every seat
(a loop that opens streams and never reads them, a client whose retries pile up) every other caller would
get only 503s. So one caller holds at most ``share`` seats (``STATEPORT_MAX_WAITERS_PER_CALLER``, by
default half of ``limit``); past it that caller, and only that one, is told 429 with ``Retry-After``: it is
what that caller does, not the process's load, that refuses it.

A caller is who a request's token stands for: an API token's subject (an application, a user, a worker
fleet), with every task token its claims handed out (their ``claimant``); a task token minted on its own
(``stateport token ti``) is a caller of its own. Inside a caller's share:

- one task instance holds at most half of it (``member_share``), so that no one task of a worker holds
  every wait its siblings need (an outsider's find: six state watches of one task made a sibling's one
  watch wait 60 s and fail); its task tokens are no second share that would let one token, with its
  workers, hold every seat (another);
- its workers' claim and stop long-polls (``POLLS``) hold at most half of it too. A poll refused a seat
  is not refused: the route answers it at once, as one that does not wait, and the worker asks again a
  moment later. Refused outright, its tasks' and its applications' waits crowded out its claims, and it
  stopped claiming (outsiders' finds, with one worker and with several sharing a token).

Seats are counted in this process only: each process of a deployment keeps its own share, as it keeps
its own ``limit``. A caller's key (``seat_key``) names its principal, and for a task instance or the polls,
the member inside it.
"""

from __future__ import annotations

from msgspec import Struct

from stateport.domain.errors import Overloaded, Refused

# STATEPORT_MAX_WAITERS's default: enough for the 10,000 and 20,000-waiter benchmarks with room to spare.
DEFAULT_LIMIT = 50_000
# STATEPORT_MAX_STREAMED_PAGES's default: a listing sent a part at a time holds about a part (1 MiB by
# default, 1.3 MB measured) while its client reads, so 256 of them hold about 330 MB.
DEFAULT_STREAMED_PAGES = 256


class SeatNames(Struct, frozen=True, kw_only=True):
    """What a kind of seat is called in its refusals: what the process holds (``held``), what a caller
    holds (``each``), the settings that bound them, and where else to go."""

    held: str
    each: str
    limit_setting: str
    share_setting: str
    elsewhere: str


WAITERS = SeatNames(
    held="waiters",
    each="waits",
    limit_setting="STATEPORT_MAX_WAITERS",
    share_setting="STATEPORT_MAX_WAITERS_PER_CALLER",
    elsewhere="wait on another process",
)
# A listing whose page is sent a part at a time (``stateport.http.streamed_pages``) holds one of these.
STREAMED_PAGES = SeatNames(
    held="long listings being sent",
    each="long listings being sent",
    limit_setting="STATEPORT_MAX_STREAMED_PAGES",
    share_setting="STATEPORT_MAX_STREAMED_PAGES_PER_CALLER",
    elsewhere="list on another process, or ask for smaller pages",
)


# The member of a caller's key that its workers' claim and stop long-polls count against.
POLLS = "polls"


def seat_key(principal: str, member: str | None = None) -> str:
    """The key a wait counts against: ``principal`` (a token's ``caller_key`` or claimant: hex digits, no
    ``/``), and for a task instance (``ti:<id>``) or its workers' polls (``POLLS``) the member inside it."""
    return principal if member is None else f"{principal}/{member}"


class Seats:
    """Counts the seats held, in all and per caller, against ``limit``, ``share`` and the shares inside a
    caller's (the module's docstring)."""

    __slots__ = ("_by", "held", "limit", "member_share", "names", "share")

    def __init__(self, limit: int, share: int | None = None, *, names: SeatNames = WAITERS) -> None:
        """``share`` None: half of ``limit`` (at least one)."""
        self.limit = limit
        self.share = max(1, limit // 2) if share is None else min(share, limit)
        self.member_share = max(1, self.share // 2)
        self.names = names
        self.held = 0
        # Seats per caller that holds any (absent at zero, so that callers come and go without a trace).
        self._by: dict[str, int] = {}

    def check(self, caller: str) -> None:
        """Overloaded if this process holds ``limit`` seats; Refused if the caller's key (``seat_key``)
        holds its share, or its principal holds ``share``."""
        names = self.names
        if self.held >= self.limit:
            raise Overloaded(
                f"this server process holds {self.limit} {names.held}, its {names.limit_setting}: "
                f"try again, or {names.elsewhere}"
            )
        principal, _, member = caller.partition("/")
        if self._by.get(principal, 0) >= self.share:
            self._refuse(f"this caller holds {self.share} {names.each}", "its share")
        if member and self._by.get(caller, 0) >= self.member_share:
            who = "its workers' claim and stop polls hold" if member == POLLS else "this task instance holds"
            self._refuse(f"{who} {self.member_share} {names.each}", "half of its caller's share")

    def _refuse(self, holding: str, which: str) -> None:
        raise Refused(
            f"{holding} on this server process, {which} ({self.names.share_setting}): end one, or try again "
            "later"
        )

    def take(self, caller: str) -> None:
        """One more seat for ``caller``, if it may have it (``check``)."""
        self.check(caller)
        self.join(caller)

    def join(self, caller: str) -> None:
        """One more seat for ``caller`` whatever the limits: for a wait that takes over the seat of
        another of the caller's, given back right after (a stream handed over to the server's protocol)."""
        self.held += 1
        for key in self._counted(caller):
            self._by[key] = self._by.get(key, 0) + 1

    def give(self, caller: str) -> None:
        """Give back a seat ``caller`` took."""
        self.held -= 1
        for key in self._counted(caller):
            left = self._by[key] - 1
            if left:
                self._by[key] = left
            else:
                del self._by[key]

    @staticmethod
    def _counted(caller: str) -> tuple[str, ...]:
        """The keys a seat of ``caller`` counts in: its own, and a member's (a task instance, the polls) in
        its principal's too."""
        principal, _, member = caller.partition("/")
        return (caller, principal) if member else (caller,)

    def callers(self) -> int:
        """How many keys (principals, task instances, polls) hold a seat now."""
        return len(self._by)

    def reserve(self, caller: str) -> Seat:
        """A seat taken now (``take``) for a wait that begins later: a trigger-and-wait is refused before
        its run is made, and a burst of them cannot all pass the check and then find no seat."""
        self.take(caller)
        return Seat(self, caller)


class Seat:
    """One seat taken for ``caller``: a wait given it uses it rather than taking another, and ``give``
    gives it back once, however often it is called (by the wait that ended, and by who reserved it)."""

    __slots__ = ("caller", "held", "seats")

    def __init__(self, seats: Seats, caller: str) -> None:
        self.seats = seats
        self.caller = caller
        self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self.seats.give(self.caller)
