"""``wattwise keys`` through click's CliRunner, the serve safe default, and the official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from tests.upstream import UpstreamLog, upstream_app

from wattwise.access.auth import Authenticator, check_bind, is_loopback
from wattwise.access.control import Access
from wattwise.api.app import create_app
from wattwise.build import build_gateway
from wattwise.cli import main
from wattwise.config import AuthConfig, Config, ModelConfig, PriceConfig, StoreConfig
from wattwise.exceptions import ConfigError
from wattwise.gateway import CheapestRule
from wattwise.inprocess import serve_in_thread
from wattwise.store.access import AccessStore
from wattwise.store.sql import opened

ENV = {"WATTWISE_MASTER_KEY": "mk-cli-test"}


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["keys", *args], env=ENV if env is None else env, catch_exceptions=False)


def test_keys_commands_round_trip(tmp_path: Any) -> None:
    store = f"sqlite:///{tmp_path}/keys.db"
    made = run("create", "--name", "search-team", "--budget-usd", "200/month", "--budget-j", "5e8/month",
               "--rpm", "600", "--tpm", "200000", "--models", "auto,fast", "--expires", "90d",
               "--model-limit", "fast:rpm=10,tpm=1000", "--store", store, "--json")
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert created["key"].startswith("ww-") and created["id"].startswith("key_")
    settings = created["settings"]
    assert settings["rpm"] == 600 and settings["models"] == ["auto", "fast"]
    assert settings["model_limits"] == {"fast": {"rpm": 10, "tpm": 1000}}
    assert {(b["unit"], b["limit"], b["period"]) for b in settings["budgets"]} == {
        ("usd", 200.0, "month"), ("j", 5e8, "month")}
    plain = run("create", "--name", "other", "--store", store)
    assert plain.exit_code == 0 and plain.output.strip().startswith("ww-")

    listed = json.loads(run("list", "--store", store, "--json").output)["keys"]
    assert [k["name"] for k in listed] == ["search-team", "other"]
    assert created["key"] not in json.dumps(listed)
    assert "search-team" in run("list", "--store", store).output

    updated = run("update", created["id"], "--rpm", "1200", "--store", store, "--json")
    assert json.loads(updated.output)["settings"]["rpm"] == 1200
    shown = json.loads(run("show", created["id"], "--store", store, "--json").output)
    assert shown["settings"]["rpm"] == 1200 and {s["unit"] for s in shown["spend"]} == {"usd", "j"}
    revoked = json.loads(run("revoke", created["id"], "--store", store, "--json").output)
    assert revoked["status"] == "revoked"
    missing = run("show", "key_nope", "--store", store)
    assert missing.exit_code == 2 and "no key" in missing.output

    with opened(store) as s:
        assert [row["action"] for row in AccessStore(store=s).audit_log()] == ["revoke", "update", "create", "create"]
        assert all(row["actor"].startswith("cli") for row in AccessStore(store=s).audit_log())


def test_keys_commands_need_the_master_key(tmp_path: Any) -> None:
    result = run("list", "--store", f"sqlite:///{tmp_path}/k.db", env={"WATTWISE_MASTER_KEY": ""})
    assert result.exit_code == 2 and "WATTWISE_MASTER_KEY" in result.output


def test_bad_budget_is_refused(tmp_path: Any) -> None:
    result = run("create", "--name", "x", "--budget-usd", "200/fortnight", "--store", f"sqlite:///{tmp_path}/k.db")
    assert result.exit_code == 2 and "day, month or total" in result.output


def _auth(tmp_path: Any, *, mode: str = "auto", environ: dict[str, str] | None = None,
          with_key: bool = False) -> Authenticator:
    config = Config(store=StoreConfig(url=f"sqlite:///{tmp_path}/a.db"), auth=AuthConfig(mode=mode),  # type: ignore[arg-type]
                    models={"m": ModelConfig(backend="mock")})
    if with_key:
        assert run("create", "--name", "k", "--store", config.store.url).exit_code == 0
    with opened(config.store.url) as store:
        auth = Authenticator(store=AccessStore(store=store), auth=config.auth, environ=environ or {})
        auth.load()
    return auth


def test_serve_refuses_an_open_gateway_on_a_public_address(tmp_path: Any) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    check_bind(_auth(tmp_path), host="127.0.0.1")  # the default: open, on loopback only
    with pytest.raises(ConfigError, match='mode = "none"'):
        check_bind(_auth(tmp_path), host="0.0.0.0")
    check_bind(_auth(tmp_path, mode="none"), host="0.0.0.0")
    check_bind(_auth(tmp_path, environ=ENV), host="0.0.0.0")
    # Keys exist but the secret they are hashed under is missing: they could not be checked.
    with pytest.raises(ConfigError, match="hashing secret"):
        check_bind(_auth(tmp_path, with_key=True), host="127.0.0.1")


def test_serve_command_exits_on_a_public_address_without_keys(tmp_path: Any) -> None:
    path = tmp_path / "w.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/s.db"\n[models.m]\nbackend = "mock"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(path), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2 and "refusing to serve on 0.0.0.0" in result.output


@pytest.fixture
def served(tmp_path: Any) -> Iterator[tuple[str, str]]:
    with serve_in_thread(upstream_app(UpstreamLog(), words=5, delay_s=0.0)) as upstream:
        config = Config(store=StoreConfig(url=f"sqlite:///{tmp_path}/o.db", flush_interval_s=0.01), models={
            "up": ModelConfig(backend="openai_http", base_url=upstream + "/v1", upstream_model="real",
                              price=PriceConfig(input=1.0, output=2.0))})
        made = run("create", "--name", "sdk", "--rpm", "100", "--store", config.store.url, "--json")
        key = json.loads(made.output)["key"]
        gateway = build_gateway(config, router=CheapestRule())
        access = Access(config=config, store=gateway.store, meter=gateway.meter, environ=ENV)
        with serve_in_thread(create_app(gateway, access=access)) as base:
            yield base, key


def test_openai_client_with_a_key_and_without(served: tuple[str, str]) -> None:
    base, key = served
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="up", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    stream = client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    wrong = openai.OpenAI(base_url=base + "/v1", api_key="ww-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
