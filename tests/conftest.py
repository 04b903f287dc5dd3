"""Shared fixtures: trace stores on SQLite and PostgreSQL, and gateways over mock backends.

PostgreSQL tests skip when the service is absent, except under ``CI=true`` where they must run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from wattwise.api.app import create_app
from wattwise.backends.base import Backend
from wattwise.backends.mock import MockBackend
from wattwise.config import Config, EnergyConfig, ModelConfig, PriceConfig, StoreConfig
from wattwise.gateway import Gateway
from wattwise.store.sql import TraceStore, open_store

PG_BASE = os.environ.get("WATTWISE_TEST_PG", "postgresql://127.0.0.1/test")


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_BASE, connect_timeout=2).close()
        return True
    except Exception:
        return False


def need_service(name: str, available: bool) -> None:
    if not available:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not reachable")
        pytest.skip(f"{name} not reachable")


@pytest.fixture
def pg_url() -> Iterator[str]:
    need_service("PostgreSQL", postgres_available())
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


REDIS_BASE = os.environ.get("WATTWISE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_available() -> bool:
    try:
        import redis

        redis.Redis.from_url(REDIS_BASE, socket_connect_timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the test Redis (``REDIS_BASE``); only keys under it are deleted after."""
    need_service("Redis", redis_available())
    import redis

    prefix = "wattwise-test:" + uuid.uuid4().hex[:12] + ":"
    yield prefix
    client = redis.Redis.from_url(REDIS_BASE)
    try:
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/traces.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    s = open_store(store_url)
    yield s
    s.close()


def make_config(store_url: str, models: dict[str, ModelConfig] | None = None, **store_kw: object) -> Config:
    models = models or {
        "cheap": ModelConfig(backend="mock", price=PriceConfig(input=0.1, output=0.2),
                             energy=EnergyConfig(joules_per_input_token=0.01, joules_per_output_token=0.1)),
        "dear": ModelConfig(backend="mock", price=PriceConfig(input=10.0, output=30.0, cached_input=5.0)),
    }
    return Config(store=StoreConfig(url=store_url, flush_interval_s=0.01, **store_kw), models=models)  # type: ignore[arg-type]


def make_gateway(store: TraceStore, backends: dict[str, Backend] | None = None, **store_kw: object) -> Gateway:
    backends = backends or {"cheap": MockBackend(name="cheap"), "dear": MockBackend(name="dear")}
    config = make_config(store.url, **store_kw)
    return Gateway(config=config, backends=backends, store=store)


@pytest.fixture
async def gateway(store: TraceStore) -> AsyncIterator[Gateway]:
    gw = make_gateway(store)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://wattwise") as c:
        yield c
