"""Budgets in dollars and joules: reserve a request's worst case before it runs, settle to the metered
figure after.

The worst case is pure arithmetic (:func:`worst_case`): input tokens (bounded above by the prompt's
UTF-8 bytes: no tokenizer makes more tokens than bytes) × input price + output limit × the dearer of
output and reasoning prices; joules the same with the energy profile's per-token figures, or, for a
profile given in watts, watts × the model's timeout (the longest it can be busy).

:class:`Budgeter` takes a reservation in every bucket that governs the request (the key's budgets
and its team's), all or none, through the :class:`~wattwise.access.state.SharedState`, so two
requests racing for the last of a budget cannot both get it; then it writes the worst case to the
store's ``spend`` table. :meth:`Budgeter.settle` replaces it with the metered figure.

Usage::

    budgeter = Budgeter(state=state, store=access_store, teams={"search": [Budget(unit="usd", limit=1000)]},
                        unknown_energy="refuse", unknown_cost="refuse")
    ticket = await budgeter.reserve(principal, request_id="req_1", worst=Worst(usd=0.02, j=40.0))
    await budgeter.settle(ticket, usd=0.004, j=None)          # j None: metered energy unknown
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from wattwise.access.keys import Budget
from wattwise.access.ledger import SpendLedger
from wattwise.access.periods import iso, period_bounds
from wattwise.access.principal import Principal
from wattwise.access.state import SharedState
from wattwise.exceptions import QuotaExceeded
from wattwise.metering.energy import EnergyProfile
from wattwise.metering.pricing import Price, cost_usd
from wattwise.metering.usage import Usage
from wattwise.store.access import AccessStore

UNITS = {"usd": "$", "j": "J"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Worst:
    """A request's worst case; ``None`` where it cannot be known (no price, no energy profile)."""

    usd: float | None
    j: float | None

    def __mul__(self, factor: int) -> Worst:
        return Worst(usd=None if self.usd is None else self.usd * factor,
                     j=None if self.j is None else self.j * factor)

    def dearer(self, other: Worst) -> Worst:
        """Each figure the larger of the two (unknown wins: it cannot be bounded)."""
        return Worst(usd=None if self.usd is None or other.usd is None else max(self.usd, other.usd),
                     j=None if self.j is None or other.j is None else max(self.j, other.j))


def worst_case(*, price: Price | None, profile: EnergyProfile | None, input_tokens: int, output_tokens: int,
               busy_s: float) -> Worst:
    """The most one call can cost in $ and J.

    >>> worst_case(price=Price(input=1.0, output=2.0), profile=None, input_tokens=1000, output_tokens=500,
    ...            busy_s=60).usd
    0.002
    """
    usd = None
    if price is not None:
        dear = price if price.reasoning is None or price.reasoning <= price.output else Price(
            input=price.input, output=price.reasoning)
        usd = cost_usd(Price(input=dear.input, output=dear.output),
                       Usage(input_tokens=input_tokens, output_tokens=output_tokens))
    j = None
    if profile is not None:
        if profile.joules_per_input_token is not None or profile.joules_per_output_token is not None:
            j = input_tokens * (profile.joules_per_input_token or 0.0) + output_tokens * (
                profile.joules_per_output_token or 0.0)
        elif profile.watts is not None:
            j = profile.watts * busy_s
    return Worst(usd=usd, j=j)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucket:
    """One budget applied to one key or team in its current period."""

    owner: str  # "key:<id>" or "team:<name>"
    budget: Budget
    start: float | None
    end: float | None

    @property
    def name(self) -> str:
        return f"{self.owner}:{self.budget.unit}:{self.budget.period}:{int(self.start or 0)}"

    def describe(self) -> str:
        b = self.budget
        limit = f"${b.limit:g}" if b.unit == "usd" else f"{b.limit:g} J"
        return f"{self.owner.replace(':', ' ', 1)} budget of {limit} per {b.period}"


@dataclass(kw_only=True)
class Ticket:
    """The reservations one request holds until it settles."""

    request_id: str
    key_id: str
    taken: list[tuple[Bucket, float]] = field(default_factory=list)
    worst: Worst = Worst(usd=0.0, j=0.0)
    durable: bool = False


class Budgeter:
    """Reserves and settles $ and J budgets of keys and teams over a shared state and the store."""

    def __init__(self, *, state: SharedState, store: AccessStore, teams: dict[str, list[Budget]],
                 unknown_energy: str, unknown_cost: str, clock: Callable[[], float] = time.time,
                 ledger: SpendLedger | None = None) -> None:
        self.state = state
        self.store = store
        # Spend rows: journaled and batched off the request path (synchronous without a journal).
        self.ledger = ledger or SpendLedger(store=store, directory=None)
        self.teams = teams
        self.unknown = {"j": unknown_energy, "usd": unknown_cost}
        self.clock = clock

    def buckets(self, principal: Principal, *, now: float) -> list[Bucket]:
        owned = [(f"key:{principal.key_id}", b) for b in principal.settings.budgets]
        if principal.team:
            owned += [(f"team:{principal.team}", b) for b in self.teams.get(principal.team, [])]
        return [Bucket(owner=owner, budget=b, start=start, end=end)
                for owner, b in owned for start, end in [period_bounds(b.period, now=now)]]

    async def _seed(self, bucket: Bucket) -> None:
        """First touch of a bucket since the shared state began: its spend so far, from the store."""
        if await self.state.known(bucket.name):
            return
        kind, _, who = bucket.owner.partition(":")

        def spent() -> tuple[float, float]:
            self.ledger.flush()  # this process's spend rows still on their way count too
            return self.store.spent(key_id=who if kind == "key" else None, team=who if kind == "team" else None,
                                    since=bucket.start)

        usd, j = await anyio.to_thread.run_sync(spent)
        await self.state.seed(bucket.name, used=usd if bucket.budget.unit == "usd" else j, expires_at=bucket.end)

    async def reserve(self, principal: Principal, *, request_id: str, worst: Worst) -> Ticket | None:
        """Reserve ``worst`` in every bucket governing ``principal``, or raise :class:`QuotaExceeded`."""
        assert principal.key_id is not None
        buckets = self.buckets(principal, now=self.clock())
        if not buckets:
            return None
        ticket = Ticket(request_id=request_id, key_id=principal.key_id)
        amounts = {"usd": worst.usd, "j": worst.j}
        for bucket in buckets:
            amount = amounts[bucket.budget.unit]
            if amount is None:
                if self.unknown[bucket.budget.unit] == "refuse":
                    await self._release(ticket)
                    what = "energy" if bucket.budget.unit == "j" else "price"
                    raise QuotaExceeded(f"the {bucket.describe()} cannot cover a request whose {what} is unknown "
                                        f"(budgets.unknown_{'energy' if what == 'energy' else 'cost'} = refuse)",
                                        headers=_reset_header(bucket))
                amount = 0.0
            await self._seed(bucket)
            taken = await self.state.reserve(bucket.name, amount=amount, limit=bucket.budget.limit,
                                             expires_at=bucket.end)
            if not taken.ok:
                await self._release(ticket)
                reset = iso(bucket.end)
                raise QuotaExceeded(f"the {bucket.describe()} is used up for this request "
                                    f"({taken.used + taken.reserved:.6g} of {bucket.budget.limit:g} spent or reserved, "
                                    f"this request needs up to {amount:.6g}); "
                                    + (f"it resets at {reset}" if reset else "it does not reset"),
                                    headers=_reset_header(bucket))
            ticket.taken.append((bucket, amount))
        ticket.worst = Worst(usd=worst.usd or 0.0, j=worst.j or 0.0)
        await self._write(lambda: self.ledger.reserve(
            request_id=request_id, key_id=ticket.key_id, team=principal.team, ts=self.clock(),
            usd=ticket.worst.usd or 0.0, j=ticket.worst.j or 0.0))
        ticket.durable = True
        return ticket

    async def _release(self, ticket: Ticket) -> None:
        for bucket, amount in ticket.taken:
            await self.state.settle(bucket.name, reserved=amount, actual=0.0)
        ticket.taken.clear()

    def charge(self, ticket: Ticket, *, usd: float | None, j: float | None) -> tuple[float, float, bool]:
        """What a request is charged: the metered figure; where it is unknown, its reservation under
        the ``refuse`` policy and zero under ``allow``. Also says whether the energy was unknown."""
        def pick(unit: str, metered: float | None, reserved: float | None) -> float:
            if metered is not None:
                return metered
            return (reserved or 0.0) if self.unknown[unit] == "refuse" else 0.0

        return pick("usd", usd, ticket.worst.usd), pick("j", j, ticket.worst.j), j is None

    async def settle(self, ticket: Ticket, *, usd: float | None, j: float | None) -> None:
        """Replace the reservation with the metered figure, in the shared state and in the store."""
        charged_usd, charged_j, j_unknown = self.charge(ticket, usd=usd, j=j)
        for bucket, amount in ticket.taken:
            actual = charged_usd if bucket.budget.unit == "usd" else charged_j
            await self.state.settle(bucket.name, reserved=amount, actual=actual)
        ticket.taken.clear()
        if ticket.durable:
            await self._write(lambda: self.ledger.settle(
                request_id=ticket.request_id, usd=charged_usd, j=charged_j, j_unknown=j_unknown))

    async def _write(self, write: Callable[[], None]) -> None:
        """A journal line is one ``os.write``: done here; without a journal, a database write in a thread."""
        if self.ledger.journaled:
            write()
        else:
            await anyio.to_thread.run_sync(write)


def _reset_header(bucket: Bucket) -> dict[str, str]:
    headers = {"x-wattwise-budget": bucket.describe()}
    if bucket.end is not None:
        headers["x-wattwise-budget-reset"] = iso(bucket.end) or ""
    return headers
