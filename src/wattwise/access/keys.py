"""API keys: their settings, how they are made, and how they are stored (a keyed hash, never the key).

A key is ``ww-`` and 43 URL-safe characters of ``secrets.token_urlsafe(32)`` (256 random bits). It
is shown once, when it is created; the store keeps only ``HMAC-SHA256(secret, key)``, where the
secret is the hashing secret named in ``[auth]`` (``hash_secret_env``, by default the master key's
own environment variable). A stolen database therefore yields no usable key, and without the
secret not even a way to test guesses offline. A presented key is hashed the same way and looked
up; the comparison is :func:`hmac.compare_digest` (constant time).

Usage::

    key = new_key()                                  # "ww-…", show it once
    digest = key_hash(key, secret=b"…")
    settings = KeySettings(budgets=[parse_budget("200/month", unit="usd")], rpm=600, models=["auto"])
    settings.allows("fast")                          # False: only auto
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wattwise.exceptions import InvalidRequest

KEY_PREFIX = "ww-"
PERIODS = ("day", "month", "total")


class Budget(BaseModel):
    """A spending limit: ``limit`` US dollars (``usd``) or joules (``j``) per ``period``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["usd", "j"]
    limit: float = Field(ge=0)
    period: Literal["day", "month", "total"] = "month"


class ModelLimit(BaseModel):
    """Requests and tokens per minute for one model, for one key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


class KeySettings(BaseModel):
    """What a key may do: budgets, rate limits, models, and defaults for its requests.

    ``models`` ``None`` allows every model; ``"auto"`` in it allows ``auto`` and ``auto:<policy>``.
    ``quality_target``/``max_cost_usd`` are the defaults for ``auto`` when a request names none;
    ``tag`` labels its requests for reports when the request has no tag of its own; ``store_content``
    (when set) overrides ``[store] store_content`` for its requests.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: list[Budget] = Field(default_factory=list)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    model_limits: dict[str, ModelLimit] = Field(default_factory=dict)
    models: list[str] | None = None
    quality_target: float | None = Field(default=None, ge=0, le=1)
    max_cost_usd: float | None = Field(default=None, ge=0)
    tag: str | None = Field(default=None, max_length=200)
    store_content: bool | None = None

    def allows(self, model: str) -> bool:
        if self.models is None:
            return True
        name = "auto" if model.startswith("auto:") else model
        return name in self.models


@dataclass(frozen=True, kw_only=True)
class KeyRecord:
    """A key as stored: everything but the key itself (``hash`` is its keyed hash)."""

    id: str
    name: str
    hash: str
    prefix: str
    team: str | None = None
    settings: KeySettings = field(default_factory=KeySettings)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def public(self) -> dict[str, object]:
        """The key as the admin API and ``keys show`` print it (never the hash)."""
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "team": self.team,
                "settings": self.settings.model_dump(exclude_none=True), "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "status": "revoked" if self.revoked_at else (
                    "expired" if self.expires_at is not None and self.expires_at <= time.time() else "active")}


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def key_hash(key: str, *, secret: bytes) -> str:
    """The keyed hash under which a key is stored and looked up."""
    return hmac.new(secret, key.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    """Enough of a key to recognise it in a list (``ww-AbCd…``), never enough to matter."""
    return key[: len(KEY_PREFIX) + 4] + "…"


def same(a: str, b: str) -> bool:
    """Constant-time equality of two secrets."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


_AMOUNT = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*(?:/\s*([a-z]+))?\s*")
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdwy])\s*")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_budget(text: str, *, unit: Literal["usd", "j"]) -> Budget:
    """``"200/month"``, ``"5e8/day"``, ``"50/total"`` or ``"200"`` (a month) → :class:`Budget`.

    >>> parse_budget("5e8/day", unit="j")
    Budget(unit='j', limit=500000000.0, period='day')
    """
    match = _AMOUNT.fullmatch(text)
    if not match or (match.group(2) or "month") not in PERIODS:
        raise InvalidRequest(f"budget {text!r}: use AMOUNT/PERIOD with a period of day, month or total",
                             param="budgets")
    period = match.group(2) or "month"
    return Budget(unit=unit, limit=float(match.group(1).replace("_", "")), period=period)  # type: ignore[arg-type]


def parse_duration(text: str) -> float:
    """``"90d"``, ``"12h"``, ``"1y"`` → seconds.

    >>> parse_duration("90d")
    7776000.0
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise InvalidRequest(f"duration {text!r}: use a number and s, m, h, d, w or y (90d)", param="expires")
    return float(match.group(1)) * _SECONDS[match.group(2)]
