"""Administering keys: create, update, revoke, show (with spend), shared by ``wattwise keys`` and the
admin API (``/v1/wattwise/keys``, master key only). Every change goes to the store's audit log.

A key spec is a JSON object (the admin API's body; the CLI builds the same): ``name``, ``team``,
``expires_in`` (``"90d"``) or ``expires_at`` (epoch), ``budget_usd`` / ``budget_j`` (``"200/month"``),
and any :class:`~wattwise.access.keys.KeySettings` field (``rpm``, ``tpm``, ``models``,
``model_limits``, ``quality_target``, ``max_cost_usd``, ``tag``, ``store_content``, ``budgets``).

Usage::

    record, key = create_key(access_store, {"name": "search-team", "budget_usd": "200/month", "rpm": 600},
                             secret=b"…", actor="cli", now=time.time())
    print(key)                                          # shown once
    show_key(access_store, record, teams={}, now=time.time())["spend"]
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from wattwise.access.keys import (
    Budget,
    KeyRecord,
    KeySettings,
    display_prefix,
    key_hash,
    new_key,
    new_key_id,
    parse_budget,
    parse_duration,
)
from wattwise.access.periods import iso, period_bounds
from wattwise.exceptions import InvalidRequest, NotFound
from wattwise.store.access import AccessStore

SPEC_FIELDS = {"name", "team", "expires_in", "expires_at", "budget_usd", "budget_j"}


def _settings(spec: dict[str, Any], base: KeySettings) -> KeySettings:
    """``base`` with the settings fields of ``spec`` applied (a budget shorthand replaces that unit's)."""
    fields = {k: v for k, v in spec.items() if k not in SPEC_FIELDS}
    unknown = set(fields) - set(KeySettings.model_fields)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"unknown field '{name}'", param=name)
    try:
        settings = KeySettings.model_validate({**base.model_dump(), **fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise InvalidRequest(f"{param}: {err['msg']}", param=param) from None
    budgets = list(settings.budgets)
    for unit in ("usd", "j"):
        text = spec.get(f"budget_{unit}")
        if text is not None:
            if not isinstance(text, str):
                raise InvalidRequest(f"budget_{unit} must be a string like '200/month'", param=f"budget_{unit}")
            budgets = [b for b in budgets if b.unit != unit] + [parse_budget(text, unit=unit)]
    return settings.model_copy(update={"budgets": budgets})


def _expiry(spec: dict[str, Any], now: float) -> float | None:
    if spec.get("expires_in") is not None:
        return now + parse_duration(str(spec["expires_in"]))
    value = spec.get("expires_at")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidRequest("expires_at must be an epoch time", param="expires_at")
    return None if value is None else float(value)


def _text(spec: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = spec.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or not value.isprintable():
        raise InvalidRequest(f"'{name}' must be a non-empty printable string of at most 200 characters",
                             param=name)
    return value.strip()


def create_key(store: AccessStore, spec: dict[str, Any], *, secret: bytes, actor: str,
               now: float) -> tuple[KeyRecord, str]:
    """Make a key from ``spec``; returns its record and the key itself (shown once, never stored)."""
    name = _text(spec, "name", required=True)
    assert name is not None
    key = new_key()
    record = KeyRecord(id=new_key_id(), name=name, hash=key_hash(key, secret=secret), prefix=display_prefix(key),
                       team=_text(spec, "team"), settings=_settings(spec, KeySettings()), created_at=now,
                       expires_at=_expiry(spec, now))
    store.add_key(record, actor=actor, now=now)
    return record, key


def update_key(store: AccessStore, key_id: str, spec: dict[str, Any], *, actor: str, now: float) -> KeyRecord:
    old = store.get_key(key_id)
    if old is None:
        raise NotFound(f"no key {key_id!r}", param="id")
    team = spec.get("team", ...)
    record = store.update_key(key_id, actor=actor, now=now, name=_text(spec, "name"),
                              team=_text(spec, "team") if team not in (..., None, "") else None,
                              clear_team=team in (None, ""), settings=_settings(spec, old.settings),
                              expires_at=_expiry(spec, now))
    assert record is not None
    return record


def revoke_key(store: AccessStore, key_id: str, *, actor: str, now: float) -> KeyRecord:
    record = store.revoke_key(key_id, actor=actor, now=now)
    if record is None:
        raise NotFound(f"no key {key_id!r}", param="id")
    return record


def team_budgets(teams: dict[str, Any]) -> dict[str, list[Budget]]:
    """``[budgets.teams.<name>]`` tables → budgets by team."""
    out: dict[str, list[Budget]] = {}
    for team, spec in teams.items():
        out[team] = [parse_budget(text, unit=unit) for unit, text in (("usd", spec.usd), ("j", spec.j))  # type: ignore[arg-type]
                     if text is not None]
    return out


def show_key(store: AccessStore, record: KeyRecord, *, teams: dict[str, list[Budget]], now: float
             ) -> dict[str, Any]:
    """The key as listed, plus what each of its (and its team's) budgets has spent this period."""
    spend = []
    owned = [("key", record.id, b) for b in record.settings.budgets]
    if record.team:
        owned += [("team", record.team, b) for b in teams.get(record.team, [])]
    for kind, who, budget in owned:
        start, end = period_bounds(budget.period, now=now)
        usd, j = store.spent(key_id=who if kind == "key" else None, team=who if kind == "team" else None,
                             since=start)
        spend.append({"owner": f"{kind}:{who}", "unit": budget.unit, "period": budget.period,
                      "limit": budget.limit, "spent": usd if budget.unit == "usd" else j, "resets_at": iso(end)})
    return {**record.public(), "spend": spend}
