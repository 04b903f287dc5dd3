"""Authentication: a presented key → a :class:`~wattwise.access.principal.Principal`, or nobody.

Keys are cached in memory by their keyed hash and read again from the store every
``[auth] refresh_s`` seconds (keys created or revoked by ``wattwise keys`` in another process take
effect within that), and at once after a change through the admin API.

When is a key required? ``[auth] mode = "keys"``: always; ``"none"``: never; ``"auto"`` (default):
once any key has ever been created (a revoked key still counts: revoking every key never opens the
gateway) or the master key is set. ``wattwise serve`` refuses to start unauthenticated on an
address other than loopback (:func:`check_bind`).

Usage::

    auth = Authenticator(store=access_store, auth=config.auth, environ=os.environ)
    principal = await auth.resolve("ww-…")       # None for a wrong, expired or revoked key
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Mapping

import anyio

from wattwise.access.keys import KeyRecord, key_hash, same
from wattwise.access.principal import MASTER, Principal
from wattwise.config import AuthConfig
from wattwise.exceptions import ConfigError, StoreError
from wattwise.store.access import AccessStore

log = logging.getLogger(__name__)

def secrets_from(auth: AuthConfig, environ: Mapping[str, str]) -> tuple[str | None, bytes | None]:
    """``(master key, hashing secret)`` from the environment variables ``[auth]`` names."""
    master = environ.get(auth.master_key_env) or None if auth.master_key_env else None
    secret = environ.get(auth.hash_secret_env) or None if auth.hash_secret_env else master
    return master, secret.encode() if secret else None


class Authenticator:
    """Resolves keys against the store's keys (cached) and the master key."""

    def __init__(self, *, store: AccessStore, auth: AuthConfig, environ: Mapping[str, str],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.auth = auth
        self.master, self.secret = secrets_from(auth, environ)
        self.clock = clock
        self._by_hash: dict[str, KeyRecord] = {}
        self._any_key = False
        self._loaded_at = -float("inf")

    @property
    def required(self) -> bool:
        if self.auth.mode != "auto":
            return self.auth.mode == "keys"
        return self._any_key or self.master is not None

    @property
    def has_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count)."""
        return self._any_key

    def open_path(self, path: str) -> bool:
        return path in self.auth.open_paths

    def load(self) -> None:
        """Read every key from the store (blocking)."""
        records = self.store.keys()
        self._by_hash = {r.hash: r for r in records}
        self._any_key = bool(records)
        self._loaded_at = self.clock()

    def ensure_loaded(self) -> None:
        """Read the keys now if they were never read (an app called without its lifespan, as in tests)."""
        if self._loaded_at == -float("inf"):
            self.load()

    async def refresh(self) -> None:
        """Read the keys again, off the event loop (after an admin change, and every ``refresh_s``)."""
        await anyio.to_thread.run_sync(self.load)

    async def keep_fresh(self) -> None:
        """Re-read the keys every ``refresh_s`` until cancelled (the lifespan runs it); a failed read
        keeps the keys last read, and serving started only after a successful one."""
        while True:
            await anyio.sleep(self.auth.refresh_s)
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("could not re-read API keys, keeping the cached ones: %s", exc)

    async def resolve(self, token: str | None) -> Principal | None:
        """The principal a token names, or ``None`` (missing, unknown, expired or revoked: all alike)."""
        if not token:
            return None
        if self.master is not None and same(token, self.master):
            return MASTER
        if self.secret is None:
            return None
        digest = key_hash(token, secret=self.secret)
        record = self._by_hash.get(digest)
        if record is None or not same(record.hash, digest) or not record.usable(self.clock()):
            return None
        return Principal.of(record)


    def principal_for(self, key_id: str) -> Principal | None:
        """The principal of a key by id, while it is usable (work it started runs on its budgets)."""
        for record in self._by_hash.values():
            if record.id == key_id and record.usable(self.clock()):
                return Principal.of(record)
        return None


def token_of(headers: Mapping[bytes, bytes] | list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        lower = name.lower()
        if lower == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
        elif lower == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves only this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(auth: Authenticator, *, host: str) -> None:
    """Refuse to serve unauthenticated on a non-loopback address (the safe default), and refuse keys
    that cannot be checked (keys exist but no hashing secret is set)."""
    if auth.required and auth.has_keys and auth.secret is None:
        raise ConfigError(f"API keys exist but no hashing secret is set: export {auth.auth.master_key_env} "
                          "(or the variable [auth] hash_secret_env names)", key="auth.master_key_env")
    if auth.auth.mode == "auto" and not auth.required and not is_loopback(host):
        raise ConfigError(f"refusing to serve on {host} without authentication: create a key "
                          f"(wattwise keys create), set {auth.auth.master_key_env}, or set [auth] mode = \"none\" "
                          "to serve unauthenticated on purpose (see docs/access.md)", key="auth.mode")
