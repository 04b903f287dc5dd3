"""Where cached answers live: this process (bounded LRU with TTL), or Redis for several replicas.

Both keep entries by exact key and a :class:`~wattwise.cache.index.VectorIndex` per (namespace,
context) for the semantic cache, and both carry the semantic thresholds' evidence.

**Redis** (``[cache] url = "redis://…"``): the Redis here has no vector search (no RediSearch
module), so entries live in Redis and each replica keeps the index in its own memory:

* ``{prefix}e:{key}``: the entry (JSON), with the cache's TTL; an exact lookup is one ``GET``;
* ``{prefix}log``: a stream (``XADD … MAXLEN ~ max_entries``) announcing each semantic entry
  (key, namespace, context, vector) and each verification's evidence; a replica reads what it has not
  seen (``XREAD`` from its last id, :meth:`RedisStore.sync`) before a semantic lookup, one round trip,
  and the first time reads it all, so every replica indexes every replica's entries and learns from
  every verification;
* ``{prefix}by:{field}:{value}``: sorted sets of entry keys by API key, team, tag and model, scored by
  when each entry expires (members past it are trimmed on each write), for purges.

An index row whose entry is gone from Redis (expired, purged, evicted) is dropped when a search
finds it. Redis errors raise :class:`CacheUnavailable`; the cache then answers ``bypass`` and the
request goes upstream (a cache is never a reason to fail a request).

Usage::

    store = MemoryStore(max_entries=10_000)            # or RedisStore(url=..., prefix="wattwise:cache:")
    await store.put(entry, ttl_s=3600)
    await store.get(entry.key)
    await store.nearest("key:k1", context, vector, k=4)   # [(entry, cosine), ...]
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np

from wattwise.cache.entry import Entry, pack_vector, unpack_vector
from wattwise.cache.index import VectorIndex

log = logging.getLogger(__name__)

# (threshold class, similarity, whether the cached answer was as good, whether the guard refused it)
Evidence = tuple[str, float, bool, bool]
PURGE_FIELDS = ("key_id", "team", "tag", "model")


class CacheUnavailable(Exception):
    """The shared cache could not be reached (the request bypasses it)."""


class CacheStore(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, entry: Entry, *, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def nearest(self, namespace: str, context: str, vector: np.ndarray, *, k: int
                      ) -> list[tuple[Entry, float]]: ...

    async def purge(self, **filters: str) -> int: ...

    async def publish(self, evidence: Evidence) -> None: ...

    async def sync(self) -> list[Evidence]:
        """Take in what other replicas added since the last call; returns their verification evidence."""
        ...

    async def aclose(self) -> None: ...


class _Indexes:
    """One vector index per (namespace, context), bounded in rows (oldest added goes first)."""

    def __init__(self, *, max_rows: int) -> None:
        self.max_rows = max_rows
        self.by_part: dict[tuple[str, str], VectorIndex] = {}
        self.part_of: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def add(self, key: str, namespace: str, context: str, vector: np.ndarray) -> None:
        part = (namespace, context)
        index = self.by_part.get(part)
        if index is None:
            index = self.by_part[part] = VectorIndex(dim=int(vector.shape[0]))
        index.add(key, vector)
        self.part_of[key] = part
        self.part_of.move_to_end(key)
        while len(self.part_of) > self.max_rows:
            self.remove(next(iter(self.part_of)))

    def remove(self, key: str) -> None:
        part = self.part_of.pop(key, None)
        if part is None:
            return
        index = self.by_part[part]
        index.remove(key)
        if not len(index):
            del self.by_part[part]

    def search(self, namespace: str, context: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        index = self.by_part.get((namespace, context))
        return index.search(vector, k=k) if index is not None else []

    def __len__(self) -> int:
        return len(self.part_of)


class MemoryStore:
    """This process's cache: at most ``max_entries`` entries and ``max_bytes`` of them (as JSON), least
    recently used evicted first."""

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 256 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.indexes = _Indexes(max_rows=max_entries)

    def __len__(self) -> int:
        return len(self.entries)

    async def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.time():
            await self.delete(key)
            return None
        self.entries.move_to_end(key)
        return entry

    async def put(self, entry: Entry, *, ttl_s: float) -> None:
        await self.delete(entry.key)
        self.entries[entry.key] = entry
        self.bytes += entry.size
        if entry.vector is not None:
            self.indexes.add(entry.key, entry.namespace, entry.context, entry.vector)
        while len(self.entries) > self.max_entries or (self.bytes > self.max_bytes and len(self.entries) > 1):
            await self.delete(next(iter(self.entries)))

    async def delete(self, key: str) -> None:
        gone = self.entries.pop(key, None)
        if gone is not None:
            self.bytes -= gone.size
        self.indexes.remove(key)

    async def nearest(self, namespace: str, context: str, vector: np.ndarray, *, k: int
                      ) -> list[tuple[Entry, float]]:
        out = []
        for key, similarity in self.indexes.search(namespace, context, vector, k):
            entry = await self.get(key)
            if entry is not None:
                out.append((entry, similarity))
        return out

    async def purge(self, **filters: str) -> int:
        doomed = [key for key, entry in self.entries.items() if entry.matches(**filters)]
        for key in doomed:
            await self.delete(key)
        return len(doomed)

    async def publish(self, evidence: Evidence) -> None:
        return None  # one process: its thresholds already hold it

    async def sync(self) -> list[Evidence]:
        return []  # one process: nothing to take in

    async def aclose(self) -> None:
        return None


class RedisStore:
    """Entries in Redis, shared by replicas; each replica indexes them in its own memory."""

    def __init__(self, *, url: str, prefix: str = "wattwise:cache:", timeout_s: float = 0.5,
                 max_entries: int = 100_000) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self.indexes = _Indexes(max_rows=max_entries)
        self.replica = os.urandom(6).hex()  # this replica's evidence is already in its thresholds
        self._client: Any = None
        self._last = "0-0"
        self._pending: list[Evidence] = []
        self._reading = asyncio.Lock()  # one log read at a time: concurrent ones would take an item twice

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                                   socket_connect_timeout=self.timeout_s)
        return self._client

    async def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return await getattr(self._redis(), method)(*args, **kwargs)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def get(self, key: str) -> Entry | None:
        raw = await self._do("get", self.prefix + "e:" + key)
        return Entry.from_json(raw) if raw else None

    async def put(self, entry: Entry, *, ttl_s: float) -> None:
        import redis

        ttl = max(1, int(ttl_s))
        try:
            pipe = self._redis().pipeline(transaction=False)
            pipe.set(self.prefix + "e:" + entry.key, entry.to_json(with_vector=False), ex=ttl)
            for member in self._purge_sets(entry):
                pipe.zadd(member, {entry.key: entry.expires})
                pipe.zremrangebyscore(member, "-inf", time.time())  # members whose entries have expired
                pipe.expire(member, ttl)
            if entry.vector is not None:
                pipe.xadd(self.prefix + "log", {"kind": "entry", "key": entry.key, "ns": entry.namespace,
                                                "ctx": entry.context, "vec": pack_vector(entry.vector)},
                          maxlen=self.max_entries, approximate=True)
            await pipe.execute()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def delete(self, key: str) -> None:
        self.indexes.remove(key)
        await self._do("delete", self.prefix + "e:" + key)

    def _purge_sets(self, entry: Entry) -> list[str]:
        return [f"{self.prefix}by:{name}:{getattr(entry, name)}" for name in PURGE_FIELDS
                if getattr(entry, name) is not None]

    async def _read_log(self) -> None:
        """Index the entries and take the evidence other replicas announced since the last read."""
        async with self._reading:
            while True:
                reply = await self._do("xread", {self.prefix + "log": self._last}, count=10_000)
                if not reply:
                    break
                _, items = reply[0]
                for item_id, data in items:
                    self._last = item_id.decode() if isinstance(item_id, bytes) else item_id
                    self._take({_s(k): _s(v) for k, v in data.items()})
                if len(items) < 10_000:
                    break

    def _take(self, data: dict[str, str]) -> None:
        if data.get("kind") == "entry":
            self.indexes.add(data["key"], data["ns"], data["ctx"], unpack_vector(data["vec"]))
        elif data.get("kind") == "evidence" and data.get("replica") != self.replica:
            self._pending.append((data["klass"], float(data["sim"]), data["same"] == "1", data["refused"] == "1"))

    async def nearest(self, namespace: str, context: str, vector: np.ndarray, *, k: int
                      ) -> list[tuple[Entry, float]]:
        """The nearest entries this replica has indexed (call :meth:`sync` first to see other replicas')."""
        found = self.indexes.search(namespace, context, vector, k)
        if not found:
            return []
        raws = await self._do("mget", [self.prefix + "e:" + key for key, _ in found])
        out = []
        for (key, similarity), raw in zip(found, raws, strict=True):
            if raw is None:
                self.indexes.remove(key)  # expired, purged or evicted in Redis
                continue
            out.append((Entry.from_json(raw), similarity))
        return out

    async def purge(self, **filters: str) -> int:
        chosen = {name: value for name, value in filters.items() if value is not None}
        sets = [f"{self.prefix}by:{name}:{value}" for name, value in chosen.items() if name in PURGE_FIELDS]
        if not sets:
            raise ValueError("a purge names at least one of " + ", ".join(PURGE_FIELDS))
        now = time.time()
        live = [{_s(m) for m in await self._do("zrangebyscore", name, now, "+inf")} for name in sets]
        keys = sorted(set.intersection(*live))
        doomed: list[Entry] = []
        for start in range(0, len(keys), 1000):
            raws = await self._do("mget", [self.prefix + "e:" + key for key in keys[start:start + 1000]])
            doomed += [Entry.from_json(raw) for raw in raws if raw]
        doomed = [e for e in doomed if "namespace" not in chosen or e.namespace == chosen["namespace"]]
        removed = 0
        for start in range(0, len(doomed), 1000):
            part = doomed[start:start + 1000]
            for entry in part:
                self.indexes.remove(entry.key)
            removed += int(await self._do("delete", *[self.prefix + "e:" + e.key for e in part]))
            by_set: dict[str, list[str]] = {}
            for entry in part:  # out of every set each entry is in, not only the ones filtered on
                for member in self._purge_sets(entry):
                    by_set.setdefault(member, []).append(entry.key)
            for member, members in by_set.items():
                await self._do("zrem", member, *members)
        return removed

    async def publish(self, evidence: Evidence) -> None:
        klass, similarity, same, refused = evidence
        await self._do("xadd", self.prefix + "log", {"kind": "evidence", "replica": self.replica, "klass": klass,
                                                     "sim": repr(similarity), "same": "1" if same else "0",
                                                     "refused": "1" if refused else "0"},
                       maxlen=self.max_entries, approximate=True)

    async def sync(self) -> list[Evidence]:
        """Index other replicas' new entries; their verification evidence since the last call."""
        await self._read_log()
        pending, self._pending = self._pending, []
        return pending

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def state_json(store: CacheStore) -> dict[str, Any]:
    """What ``GET /v1/wattwise/cache`` shows of a store."""
    if isinstance(store, MemoryStore):
        return {"store": "memory", "entries": len(store), "indexed": len(store.indexes), "bytes": store.bytes}
    assert isinstance(store, RedisStore)
    return {"store": "redis", "indexed": len(store.indexes), "prefix": store.prefix}


__all__ = ["CacheStore", "CacheUnavailable", "Evidence", "MemoryStore", "RedisStore", "state_json"]
