"""``wattwise keys``: create, list, show, update and revoke API keys (needs the master key).

Usage::

    $ export WATTWISE_MASTER_KEY=...
    $ wattwise keys create --name search-team --budget-usd 200/month --budget-j 5e8/month \\
          --rpm 600 --tpm 200000 --models auto,fast --expires 90d          # prints the key once
    $ wattwise keys list
    $ wattwise keys show key_0123456789abcdef --json
    $ wattwise keys update key_0123456789abcdef --rpm 1200
    $ wattwise keys revoke key_0123456789abcdef
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from wattwise.access import admin
from wattwise.access.auth import secrets_from
from wattwise.config import AuthConfig, Config, load_config
from wattwise.exceptions import WattwiseError
from wattwise.store.access import AccessStore
from wattwise.store.sql import opened


def _actor() -> str:
    """Who ran the command, for the audit log (``cli:<login>``)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _fail(exc: WattwiseError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(2)


@contextmanager
def _access(store_url: str | None, config_path: str | None) -> Iterator[tuple[AccessStore, Config | None, bytes]]:
    """The key store of the config's (or the given) store, once the master key is known."""
    config = load_config(config_path) if config_path else None
    auth = config.auth if config else AuthConfig()
    master, secret = secrets_from(auth, os.environ)
    if master is None or secret is None:
        raise click.UsageError(f"set the master key in ${auth.master_key_env} to administer keys")
    url = store_url or (config.store.url if config else "sqlite:///wattwise.db")
    with opened(url) as store:
        yield AccessStore(store=store), config, secret


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)
    fn = click.option("--store", "store_url", default=None,
                      help="Store URL (default: the config's, else ./wattwise.db).")(fn)
    return click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
                        help="Config whose store and [auth] to use.")(fn)


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--name", default=None, help="A name for the key (required to create)."),
        click.option("--team", default=None, help="The team the key belongs to ('' to clear); team budgets "
                     "come from [budgets.teams.<name>]."),
        click.option("--budget-usd", default=None, help="Dollar budget: AMOUNT/PERIOD (day, month, total)."),
        click.option("--budget-j", default=None, help="Energy budget in joules: AMOUNT/PERIOD."),
        click.option("--rpm", type=int, default=None, help="Requests per minute."),
        click.option("--tpm", type=int, default=None, help="Tokens per minute (prompt estimate + output limit)."),
        click.option("--models", default=None, help="Comma-separated models the key may use (auto: routing)."),
        click.option("--model-limit", "model_limits", multiple=True,
                     help="Per-model limits: MODEL:rpm=N,tpm=N (repeatable)."),
        click.option("--expires", default=None, help="Lifetime: 90d, 12h, 1y."),
        click.option("--quality-target", type=float, default=None, help="Default quality_target for auto."),
        click.option("--max-cost-usd", type=float, default=None, help="Default max_cost_usd for auto."),
        click.option("--tag", default=None, help="Tag for reports, when a request has none."),
        click.option("--store-content/--no-store-content", default=None,
                     help="Store prompts and answers of this key's requests (overrides [store])."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _spec(values: dict[str, Any]) -> dict[str, Any]:
    """CLI options → the admin spec (only the options given)."""
    spec: dict[str, Any] = {}
    for name in ("name", "team", "budget_usd", "budget_j", "rpm", "tpm", "quality_target", "max_cost_usd", "tag",
                 "store_content"):
        if values.get(name) is not None:
            spec[name] = values[name]
    if values.get("models") is not None:
        spec["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    if values.get("expires"):
        spec["expires_in"] = values["expires"]
    limits = {}
    for text in values.get("model_limits") or ():
        model, _, rest = text.partition(":")
        try:
            limits[model] = {k.strip(): int(v) for k, v in (part.split("=") for part in rest.split(",") if part)}
        except ValueError:
            raise click.BadParameter("use MODEL:rpm=N,tpm=N", param_hint="--model-limit") from None
    if limits:
        spec["model_limits"] = limits
    return spec


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data))
        return
    for name, value in data.items():
        if value not in (None, {}, []):
            click.echo(f"{name:>12}  {json.dumps(value) if isinstance(value, dict | list) else value}")


@click.group("keys")
def keys_command() -> None:
    """API keys: create, list, show, update, revoke (needs the master key in the environment)."""


@keys_command.command("create")
@_settings_options
@_common
def create(store_url: str | None, config_path: str | None, as_json: bool, **values: Any) -> None:
    """Create a key and print it (shown once; only its keyed hash is stored)."""
    try:
        with _access(store_url, config_path) as (store, _, secret):
            record, key = admin.create_key(store, _spec(values), secret=secret, actor=_actor(), now=time.time())
    except WattwiseError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({"id": record.id, "key": key, **record.public()}))
        return
    click.echo(key)
    click.echo(f"created {record.id} ({record.name}); the key is shown only this once", err=True)


@keys_command.command("list")
@_common
def list_keys(store_url: str | None, config_path: str | None, as_json: bool) -> None:
    """Every key: id, name, team, status (never the key or its hash)."""
    try:
        with _access(store_url, config_path) as (store, _, _secret):
            records = store.keys()
    except WattwiseError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({"keys": [r.public() for r in records]}))
        return
    click.echo(f"{'id':<21} {'name':<24} {'team':<16} {'status':<8} prefix")
    for r in records:
        public = r.public()
        click.echo(f"{r.id:<21} {r.name[:24]:<24} {(r.team or '-')[:16]:<16} {public['status']!s:<8} {r.prefix}")


@keys_command.command("show")
@click.argument("key_id")
@_common
def show(key_id: str, store_url: str | None, config_path: str | None, as_json: bool) -> None:
    """One key, with what each of its budgets (and its team's) has spent this period."""
    try:
        with _access(store_url, config_path) as (store, config, _):
            record = store.get_key(key_id)
            if record is None:
                raise admin.NotFound(f"no key {key_id!r}")
            teams = admin.team_budgets(config.budgets.teams) if config else {}
            data = admin.show_key(store, record, teams=teams, now=time.time())
    except WattwiseError as exc:
        _fail(exc)
        return
    _print(data, as_json)


@keys_command.command("update")
@click.argument("key_id")
@_settings_options
@_common
def update(key_id: str, store_url: str | None, config_path: str | None, as_json: bool, **values: Any) -> None:
    """Change a key's settings (only the options given)."""
    try:
        with _access(store_url, config_path) as (store, _, _secret):
            record = admin.update_key(store, key_id, _spec(values), actor=_actor(), now=time.time())
    except WattwiseError as exc:
        _fail(exc)
        return
    _print(record.public(), as_json)


@keys_command.command("revoke")
@click.argument("key_id")
@_common
def revoke(key_id: str, store_url: str | None, config_path: str | None, as_json: bool) -> None:
    """Revoke a key: refused from the next key refresh on (``[auth] refresh_s``)."""
    try:
        with _access(store_url, config_path) as (store, _, _secret):
            record = admin.revoke_key(store, key_id, actor=_actor(), now=time.time())
    except WattwiseError as exc:
        _fail(exc)
        return
    _print(record.public(), as_json)
