"""The access layer of a running gateway: who (authentication), may they (models, rate limits),
within budget ($ and J): one object, built from the config and handed to the app.

For each request from a key, :meth:`Access.admit` (called by the routes right after the request's
:class:`~wattwise.call.Call` is opened) applies the key's settings to the call, checks the model,
counts the request in its rate-limit windows and reserves its worst case in every budget that
governs it; the call's ``on_close`` settles the reservation to the metered figure when the call
ends, however it ends. Requests without a principal (no keys configured, or the master key) pass
untouched.

Usage::

    access = Access(config=config, store=gateway.store, meter=gateway.meter, environ=os.environ)
    await access.start()
    headers = await access.admit(call, principal)      # x-ratelimit-* and budget headers, or raises
    await access.stop()                                 # waits for settlements in flight
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import reduce
from pathlib import Path

from wattwise.access.admin import team_budgets
from wattwise.access.auth import Authenticator
from wattwise.access.budgets import Budgeter, Ticket, Worst, worst_case
from wattwise.access.ledger import SpendLedger
from wattwise.access.limits import Limiter
from wattwise.access.principal import Principal
from wattwise.access.state import SharedState, open_state
from wattwise.call import Call, Meter
from wattwise.config import Config
from wattwise.exceptions import PermissionDenied, QuotaExceeded
from wattwise.store.access import AccessStore
from wattwise.store.journal import default_directory
from wattwise.store.sql import TraceStore

log = logging.getLogger(__name__)
# Per message, the tokens a chat template adds around its content (role markers, separators).
MESSAGE_OVERHEAD = 8


class Access:
    """Authentication, model permissions, rate limits and budgets for one gateway."""

    def __init__(self, *, config: Config, store: TraceStore, meter: Meter, environ: Mapping[str, str],
                 state: SharedState | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.meter = meter
        self.keys = AccessStore(store=store)
        self.auth = Authenticator(store=self.keys, auth=config.auth, environ=environ, clock=clock)
        self.state = state or open_state(config.state.url, timeout_s=config.state.timeout_s,
                                         limits_fail_open=config.state.limits_on_failure == "open")
        journal = config.store.journal_dir
        directory = default_directory(store.url) if journal is None else Path(journal) if journal else None
        self.ledger = SpendLedger(store=self.keys, directory=directory)
        self.budgeter = Budgeter(state=self.state, store=self.keys, teams=team_budgets(config.budgets.teams),
                                 unknown_energy=config.budgets.unknown_energy,
                                 unknown_cost=config.budgets.unknown_cost, clock=clock, ledger=self.ledger)
        self.limiter = Limiter(state=self.state)
        self._settling: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the keys (a failure stops the server from starting) and keep them fresh; apply the
        spend journals of processes that died."""
        await asyncio.to_thread(self.ledger.start)
        await self.auth.refresh()
        self._refresher = asyncio.get_running_loop().create_task(self.auth.keep_fresh())

    async def stop(self) -> None:
        """Stop refreshing keys, wait for the settlements still running, then release the shared state."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await asyncio.to_thread(self.ledger.close)
        await self.state.aclose()

    # -- admission -------------------------------------------------------------------------------

    async def govern_batch_line(self, call: Call, key_id: str | None) -> None:
        """A batch line runs on the budgets of the key that created its batch (not its per-minute
        limits: batch work waits for headroom instead); a key since revoked or expired stops its lines."""
        if key_id is None:
            return  # made with no keys configured
        principal = self.auth.principal_for(key_id)
        if principal is None:
            raise PermissionDenied("the API key that created this batch is revoked or expired", param="key")
        await self.admit(call, principal, rate_limit=False)

    async def admit(self, call: Call, principal: Principal | None, *, rate_limit: bool = True) -> dict[str, str]:
        """Govern ``call`` for ``principal``: the headers for its answer, or raise the refusal."""
        if principal is not None:
            call.principal = principal
        if not isinstance(principal, Principal) or principal.admin:
            return {}
        settings = principal.settings
        model = call.body.model
        if not settings.allows(model):
            raise PermissionDenied(f"This API key may not use the model '{model}'", param="model")
        self._apply_defaults(call, principal)
        input_bound, output = self._tokens(call)
        headers = await self.limiter.admit(principal, model=model, tokens=math.ceil(input_bound / 4) + output) \
            if rate_limit else {}
        worst = self.worst(model, input_tokens=input_bound, output_tokens=output)
        try:
            ticket = await self.budgeter.reserve(principal, request_id=call.request_id, worst=worst)
        except QuotaExceeded as exc:
            exc.headers = {**headers, **exc.headers}  # the refusal still says where the rate limits stand
            raise
        if ticket is not None:
            call.on_close = lambda ended: self._settle(ticket, ended)
            units = {bucket.budget.unit for bucket, _ in ticket.taken}
            if "j" in units:
                headers["x-wattwise-budget-unknown-energy"] = self.config.budgets.unknown_energy
        return headers

    def _apply_defaults(self, call: Call, principal: Principal) -> None:
        settings = principal.settings
        if settings.store_content is not None:
            call.store_content = settings.store_content
        if call.tag is None and settings.tag:
            call.tag = settings.tag
        options = call.body.wattwise
        update = {name: getattr(settings, name) for name in ("quality_target", "max_cost_usd")
                  if getattr(options, name) is None and getattr(settings, name) is not None}
        if update and call.body.model.startswith("auto"):
            call.body = call.body.model_copy(update={"wattwise": options.model_copy(update=update)})

    def _tokens(self, call: Call) -> tuple[int, int]:
        """``(input bound, output limit)``: no tokenizer makes more tokens than UTF-8 bytes."""
        request = call.request
        extra = request.extra or {}
        extra_bytes = sum(len(str(v).encode()) for k, v in extra.items() if k in ("tools", "response_format"))
        input_bound = len(call.prompt.encode()) + extra_bytes + MESSAGE_OVERHEAD * max(1, len(request.messages))
        n = extra.get("n", 1)
        n = n if isinstance(n, int) and n > 0 else 1
        return input_bound, (request.max_tokens or self.config.budgets.default_output_tokens) * n

    def worst(self, model: str, *, input_tokens: int, output_tokens: int) -> Worst:
        """The request's worst case on ``model``; for ``auto``, the dearest configured model × ``auto_calls``."""
        def one(name: str) -> Worst:
            spec = self.config.models[name]
            return worst_case(price=self.meter.prices.get(name), profile=self.meter.profiles.get(name),
                              input_tokens=input_tokens, output_tokens=output_tokens,
                              busy_s=spec.timeout_s * (1 + spec.retries))

        if model == "auto" or model.startswith("auto:"):
            names = [name for name in self.meter.prices if name in self.config.models]
            return reduce(Worst.dearer, map(one, names)) * self.config.budgets.auto_calls
        if model not in self.meter.prices or model not in self.config.models:
            return Worst(usd=0.0, j=0.0)  # not a configured model: the request fails with a 404, costing nothing
        return one(model)

    # -- settlement ------------------------------------------------------------------------------

    def _settle(self, ticket: Ticket, call: Call) -> None:
        """``Call.on_close``: settle off the call's path (the store write runs in a worker thread)."""
        usd, j = self.metered(ticket, call)
        try:
            task = asyncio.get_running_loop().create_task(self.budgeter.settle(ticket, usd=usd, j=j))
        except RuntimeError:
            log.warning("request %s ended outside an event loop: its reservation stays at its worst case",
                        ticket.request_id)
            return
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settling a budget reservation failed; it stays at its worst case",
                      exc_info=task.exception())

    @staticmethod
    def metered(ticket: Ticket, call: Call) -> tuple[float | None, float | None]:
        """What the call is charged, ``None`` where unknown.

        Metered usage: its cost and energy. Nothing metered but text already sent (a stream cut
        short, whose usage never came): its worst case, whatever the policy, so leaving early never
        spends less. Nothing metered and nothing sent (refused, upstream failed): zero.
        """
        outcome = call.outcome
        if outcome is not None and outcome.usage is not None:
            return outcome.cost_usd, outcome.energy.joules
        if call.parts:
            return ticket.worst.usd, ticket.worst.j
        return 0.0, 0.0
