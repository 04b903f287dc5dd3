"""Who a request comes from, as authentication resolved it (put in ``scope["state"]["principal"]``).

Usage::

    principal = Principal(key_id="key_1", name="search-team", team="search", settings=KeySettings())
    principal.admin            # False: only the master key administers keys
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wattwise.access.keys import KeyRecord, KeySettings


@dataclass(frozen=True, kw_only=True)
class Principal:
    """A resolved caller: an API key (``key_id``), or the master key (``admin``, no key id)."""

    key_id: str | None
    name: str
    team: str | None = None
    settings: KeySettings = field(default_factory=KeySettings)
    admin: bool = False

    @classmethod
    def of(cls, record: KeyRecord) -> Principal:
        return cls(key_id=record.id, name=record.name, team=record.team, settings=record.settings)


MASTER = Principal(key_id=None, name="master", admin=True)
