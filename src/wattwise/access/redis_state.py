""":class:`~wattwise.access.state.SharedState` over Redis: budgets and rate limits shared by replicas.

Selected by ``[state] url = "redis://host:6379/0"``. Every operation is one Lua script, so it is
atomic in Redis whichever replica calls it: two replicas racing for the last of a budget cannot both
get it. Rate-limit windows are timed by Redis's own clock (``TIME`` inside the script), so replicas
whose clocks differ still count in the same window. Redis holds only the live figures (settled spend
and reservations of the current period, window counts); the trace store's ``spend`` rows stay the
durable record, and a bucket Redis lost (restart, eviction) is seeded from them again.

**When Redis cannot be reached** (connection refused, timeout, any Redis error) within
``timeout_s`` (``[state] timeout_s``, 2 s: long enough that a busy event loop reading a late reply
is not mistaken for Redis down): budget operations fail closed with :class:`StateUnavailable`, a 503
in OpenAI's body (a request is never served unmetered against a budget it cannot check); rate-limit
checks fail open (``limits_fail_open=True``, ``[state] limits_on_failure = "open"``, the default:
allowed, logged once per ``LOG_EVERY_S``) or closed (the same 503). A
settlement that cannot be written leaves its reservation counted until the period ends (the safe
side: the budget looks more used, never less) and is logged.

Keys are ``{prefix}b:{bucket}`` (a hash: ``used``, ``reserved``, ``seeded``; expires with its period)
and ``{prefix}w:{window}`` (a hash: ``start``, ``count``; expires after two windows). A bucket known
to be seeded is not asked about again for ``KNOWN_TTL_S`` (one round trip fewer per request); if
Redis lost it meanwhile, the reservations made then start a bucket without ``seeded``, which the
next request seeds from the store (adding, never overwriting: nothing reserved is forgotten).

Usage::

    state = RedisState(url="redis://127.0.0.1:6379/0", prefix="wattwise:", timeout_s=2.0, limits_fail_open=True)
    ok = await state.reserve("key:k1:usd:month:1764547200", amount=0.02, limit=200.0, expires_at=t_end)
    await state.settle("key:k1:usd:month:1764547200", reserved=0.02, actual=0.004)
    await state.aclose()
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from wattwise.access.state import Hit, Reservation
from wattwise.exceptions import WattwiseError

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
KNOWN_TTL_S = 1.0  # how long a bucket Redis said it holds is taken as held without asking again
KNOWN_MAX = 10_000
POOL_WAIT_FACTOR = 10  # how many timeouts a request may wait for one of the pool's connections

# Lua numbers are doubles; a Lua number in a reply is truncated to an integer, so figures go back as
# strings ('%.17g' round-trips a double exactly).
# A bucket made by seed() carries 'seeded'. One that reserve() had to make (Redis lost it: restart,
# eviction) lacks it, so known() says no and the next request seeds it: the store's figure is added
# to what was reserved and settled meanwhile (counted twice for those requests: the safe side).
_SEED = """
if redis.call('HEXISTS', KEYS[1], 'seeded') == 1 then return 0 end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0') + tonumber(ARGV[1])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], 'used', string.format('%.17g', used), 'seeded', '1')
if fresh then redis.call('HSET', KEYS[1], 'reserved', '0') end
if ARGV[2] ~= '' then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return 1
"""

_RESERVE = """
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local figures = redis.call('HMGET', KEYS[1], 'used', 'reserved')
local used, reserved = tonumber(figures[1] or '0'), tonumber(figures[2] or '0')
local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ok = 0
if used + reserved + amount <= limit then
  ok = 1
  reserved = reserved + amount
  redis.call('HSET', KEYS[1], 'used', string.format('%.17g', used), 'reserved', string.format('%.17g', reserved))
  if fresh and ARGV[3] ~= '' then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
end
return {ok, string.format('%.17g', used), string.format('%.17g', reserved)}
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local figures = redis.call('HMGET', KEYS[1], 'used', 'reserved')
local reserved = math.max(0, tonumber(figures[2] or '0') - tonumber(ARGV[1]))
local used = tonumber(figures[1] or '0') + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'used', string.format('%.17g', used), 'reserved', string.format('%.17g', reserved))
return 1
"""

# ARGV: cost, limit (or '' for a refund), window_s. Returns {allowed, remaining, reset_s} as strings.
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window_s = tonumber(ARGV[3])
local start = math.floor(now / window_s) * window_s
local figures = redis.call('HMGET', KEYS[1], 'start', 'count')
local count = 0
if figures[1] and tonumber(figures[1]) == start then count = tonumber(figures[2]) end
local cost = tonumber(ARGV[1])
local allowed = 1
if ARGV[2] == '' then
  count = math.max(0, count - cost)
elseif count + cost <= tonumber(ARGV[2]) then
  count = count + cost
else
  allowed = 0
end
redis.call('HSET', KEYS[1], 'start', string.format('%.17g', start), 'count', string.format('%.17g', count))
redis.call('PEXPIRE', KEYS[1], math.ceil(2000 * window_s))
local remaining = 0
if ARGV[2] ~= '' then remaining = math.max(0, tonumber(ARGV[2]) - count) end
return {allowed, string.format('%.17g', remaining), string.format('%.17g', start + window_s - now)}
"""


class StateUnavailable(WattwiseError):
    """503: the shared state (Redis) cannot be reached, so a budget or limit cannot be checked."""

    status = 503
    error_type = "server_error"
    code = "state_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"retry-after": "1"}


class RedisState:
    """Budget reservations and rate-limit windows in Redis, one Lua script per operation.

    ``timeout_s`` bounds each call (connect and reply), so a Redis that hangs costs a request at most
    that long before the 503 (or, for limits that fail open, the pass). At most ``max_connections``
    connections are open; a burst beyond them queues for one. The pool is made on first use, in the
    event loop that uses it.
    """

    def __init__(self, *, url: str, prefix: str = "wattwise:", timeout_s: float = 2.0,
                 limits_fail_open: bool = False, max_connections: int = 32) -> None:
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.limits_fail_open = limits_fail_open
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._logged_at = -math.inf
        # bucket → until when (monotonic) it is taken as seeded: saves a round trip on most requests
        self._known: dict[str, float] = {}

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            # A blocking pool: a burst waits for a free connection (a local queue, not Redis being down)
            # instead of failing once every connection is busy.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=POOL_WAIT_FACTOR * self.timeout_s,
                socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s, decode_responses=True)
            self._client = aioredis.Redis(connection_pool=pool)
            self._scripts = {key: self._client.register_script(text) for key, text in
                             (("seed", _SEED), ("reserve", _RESERVE), ("settle", _SETTLE), ("hit", _HIT))}
        return self._client

    async def _run(self, name: str, key: str, *args: object) -> Any:
        """Run a script; any failure to get its answer becomes :class:`StateUnavailable`."""
        try:
            self._redis()
            return await self._scripts[name](keys=[key], args=[_arg(a) for a in args])
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "no answer"
            raise _unavailable(exc) from exc

    async def _call(self, method: str, *args: Any) -> Any:
        """A plain Redis command, failures mapped as in :meth:`_run`."""
        try:
            return await getattr(self._redis(), method)(*args)
        except Exception as exc:
            raise _unavailable(exc) from exc

    def _bucket(self, bucket: str) -> str:
        return f"{self.prefix}b:{bucket}"

    def _window(self, window: str) -> str:
        return f"{self.prefix}w:{window}"

    async def seed(self, bucket: str, *, used: float, expires_at: float | None) -> bool:
        return bool(int(await self._run("seed", self._bucket(bucket), used, _expiry(expires_at))))

    async def known(self, bucket: str) -> bool:
        now = time.monotonic()
        if self._known.get(bucket, -math.inf) > now:
            return True
        seeded = bool(int(await self._call("hexists", self._bucket(bucket), "seeded")))
        if seeded:
            if len(self._known) >= KNOWN_MAX:
                self._known = {k: t for k, t in self._known.items() if t > now}
            self._known[bucket] = now + KNOWN_TTL_S
        return seeded

    async def reserve(self, bucket: str, *, amount: float, limit: float,
                      expires_at: float | None) -> Reservation:
        ok, used, reserved = await self._run("reserve", self._bucket(bucket), amount, limit, _expiry(expires_at))
        return Reservation(ok=bool(int(ok)), used=float(used), reserved=float(reserved))

    async def settle(self, bucket: str, *, reserved: float, actual: float) -> None:
        try:
            await self._run("settle", self._bucket(bucket), reserved, actual)
        except StateUnavailable as exc:
            # The request is over and its figure is in the store; the reservation stays counted.
            log.warning("could not settle %s (reserved %g, actual %g): %s", bucket, reserved, actual, exc.__cause__)

    async def usage(self, bucket: str) -> tuple[float, float]:
        used, reserved = await self._call("hmget", self._bucket(bucket), ["used", "reserved"])
        return float(used or 0.0), float(reserved or 0.0)

    async def hit(self, window: str, *, cost: float, limit: float, window_s: float) -> Hit:
        try:
            allowed, remaining, reset_s = await self._run("hit", self._window(window), cost, limit, window_s)
        except StateUnavailable as exc:
            if not self.limits_fail_open:
                raise
            self._note_open(exc)
            return Hit(allowed=True, remaining=limit, reset_s=window_s)
        return Hit(allowed=bool(int(allowed)), remaining=float(remaining), reset_s=float(reset_s))

    async def refund(self, window: str, *, cost: float, window_s: float) -> None:
        try:
            await self._run("hit", self._window(window), cost, "", window_s)
        except StateUnavailable as exc:
            self._note_open(exc)

    def _note_open(self, exc: StateUnavailable) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("rate limits not enforced: %s (%s)", exc.message, exc.__cause__)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose(close_connection_pool=True)  # the pool was passed in, so not closed by default


def _unavailable(exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"the shared state (Redis) is unavailable ({type(exc).__name__}); budgets and rate "
                            "limits cannot be checked, try again shortly")


def _expiry(expires_at: float | None) -> str:
    return "" if expires_at is None or math.isinf(expires_at) else str(math.ceil(expires_at))


def _arg(value: object) -> str:
    return repr(float(value)) if isinstance(value, int | float) else str(value)
