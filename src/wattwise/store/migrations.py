"""Schema changes as named, append-only migrations; each is applied once and recorded.

Never edit or reorder a migration that has shipped: append a new one.

Usage::

    apply_migrations(connection, dialect="sqlite")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Migration = tuple[str, Callable[[str], list[str]]]


def _types(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        return {"real": "DOUBLE PRECISION", "int": "BIGINT", "bool": "BOOLEAN", "text": "TEXT"}
    return {"real": "REAL", "int": "INTEGER", "bool": "INTEGER", "text": "TEXT"}


def m0001_requests(dialect: str) -> list[str]:
    t = _types(dialect)
    return [
        f"""CREATE TABLE requests (
            id {t['text']} PRIMARY KEY, ts {t['real']} NOT NULL, requested_model {t['text']} NOT NULL,
            model {t['text']}, tag {t['text']}, route_policy {t['text']}, route_reason {t['text']},
            stream {t['bool']} NOT NULL, messages {t['text']}, response {t['text']},
            prompt_hash {t['text']},
            input_tokens {t['int']}, cached_input_tokens {t['int']}, output_tokens {t['int']},
            reasoning_tokens {t['int']},
            cost_usd {t['real']}, cost_source {t['text']} NOT NULL,
            energy_j {t['real']}, energy_source {t['text']} NOT NULL,
            ttft_s {t['real']}, latency_s {t['real']}, status {t['text']} NOT NULL,
            http_status {t['int']} NOT NULL, error {t['text']}, score {t['real']}, calls {t['text']}
        )""",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_model_ts ON requests (model, ts)",
    ]


def m0002_batch(dialect: str) -> list[str]:
    """The Batch API's durable queue: uploaded and result files, batches, and one row per line."""
    t = _types(dialect)
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    return [
        f"""CREATE TABLE batch_files (
            id {t['text']} PRIMARY KEY, purpose {t['text']} NOT NULL, filename {t['text']} NOT NULL,
            bytes {t['int']} NOT NULL, created_at {t['real']} NOT NULL, kind {t['text']} NOT NULL,
            batch_id {t['text']}, content {blob} NOT NULL
        )""",
        f"""CREATE TABLE batches (
            id {t['text']} PRIMARY KEY, input_file_id {t['text']} NOT NULL, endpoint {t['text']} NOT NULL,
            completion_window {t['text']} NOT NULL, status {t['text']} NOT NULL,
            created_at {t['real']} NOT NULL, expires_at {t['real']} NOT NULL, in_progress_at {t['real']},
            finalizing_at {t['real']}, completed_at {t['real']}, failed_at {t['real']},
            expired_at {t['real']}, cancelling_at {t['real']}, cancelled_at {t['real']},
            output_file_id {t['text']}, error_file_id {t['text']}, metadata {t['text']}, errors {t['text']}
        )""",
        "CREATE INDEX batches_status ON batches (status)",
        f"""CREATE TABLE batch_lines (
            batch_id {t['text']} NOT NULL, line_no {t['int']} NOT NULL, custom_id {t['text']},
            model {t['text']}, body {t['text']}, state {t['text']} NOT NULL, owner {t['text']}, lease_until {t['real']},
            attempts {t['int']} NOT NULL DEFAULT 0, request_id {t['text']}, response {t['text']},
            error {t['text']}, finished_at {t['real']},
            PRIMARY KEY (batch_id, line_no)
        )""",
        "CREATE INDEX batch_lines_state ON batch_lines (state, lease_until)",
        "CREATE INDEX batch_lines_batch_state ON batch_lines (batch_id, state)",
        "CREATE INDEX batch_lines_owner ON batch_lines (owner)",
    ]


def m0003_file_chunks(dialect: str) -> list[str]:
    """Files stored in chunks (an upload is written and read back with bounded memory), an explicit
    expiry per file, and indexes for listing files and purging expired ones."""
    t = _types(dialect)
    blob = "BYTEA" if dialect == "postgresql" else "BLOB"
    return [
        f"""CREATE TABLE batch_file_chunks (
            file_id {t['text']} NOT NULL, seq {t['int']} NOT NULL, data {blob} NOT NULL,
            PRIMARY KEY (file_id, seq)
        )""",
        f"ALTER TABLE batch_files ADD COLUMN expires_at {t['real']}",
        "CREATE INDEX batch_files_created ON batch_files (created_at, id)",
    ]


def m0004_key_owners(dialect: str) -> list[str]:
    """Who made what: the API key and team on each trace row (reports and metrics by key and team),
    and the key that owns each batch and file (other keys get a 404)."""
    t = _types(dialect)
    return [
        f"ALTER TABLE requests ADD COLUMN key_id {t['text']}",
        f"ALTER TABLE requests ADD COLUMN team {t['text']}",
        f"ALTER TABLE batch_files ADD COLUMN key_id {t['text']}",
        f"ALTER TABLE batches ADD COLUMN key_id {t['text']}",
        "CREATE INDEX requests_key_ts ON requests (key_id, ts)",
    ]


def m0005_access(dialect: str) -> list[str]:
    """Access control: API keys (a keyed hash, never the key), spend per governed request (its worst
    case while it runs, the metered figure once it settles) and the audit log of admin actions."""
    t = _types(dialect)
    return [
        f"""CREATE TABLE api_keys (
            id {t['text']} PRIMARY KEY, name {t['text']} NOT NULL, hash {t['text']} NOT NULL UNIQUE,
            prefix {t['text']} NOT NULL, team {t['text']}, settings {t['text']} NOT NULL,
            created_at {t['real']} NOT NULL, expires_at {t['real']}, revoked_at {t['real']}
        )""",
        f"""CREATE TABLE spend (
            request_id {t['text']} PRIMARY KEY, key_id {t['text']} NOT NULL, team {t['text']},
            ts {t['real']} NOT NULL, state {t['text']} NOT NULL, usd {t['real']} NOT NULL, j {t['real']} NOT NULL,
            j_unknown {t['bool']} NOT NULL
        )""",
        "CREATE INDEX spend_key_ts ON spend (key_id, ts)",
        "CREATE INDEX spend_team_ts ON spend (team, ts)",
        f"""CREATE TABLE audit_log (
            id {t['text']} PRIMARY KEY, ts {t['real']} NOT NULL, actor {t['text']} NOT NULL,
            action {t['text']} NOT NULL, key_id {t['text']}, detail {t['text']} NOT NULL
        )""",
        "CREATE INDEX audit_log_ts ON audit_log (ts)",
    ]


def m0006_flywheel(dialect: str) -> list[str]:
    """The flywheel: the router version that decided each trace row, a durable queue of label jobs
    (judge and shadow calls, leased like batch lines), the labels they produced, and every router the
    retrain built (the newest promoted one is what replicas serve)."""
    t = _types(dialect)
    return [
        f"ALTER TABLE requests ADD COLUMN router_version {t['text']}",
        f"""CREATE TABLE label_jobs (
            id {t['text']} PRIMARY KEY, created_at {t['real']} NOT NULL, kind {t['text']} NOT NULL,
            body {t['text']} NOT NULL, state {t['text']} NOT NULL, owner {t['text']}, lease_until {t['real']},
            attempts {t['int']} NOT NULL DEFAULT 0, error {t['text']}, finished_at {t['real']}
        )""",
        "CREATE INDEX label_jobs_state ON label_jobs (state, lease_until)",
        "CREATE INDEX label_jobs_owner ON label_jobs (owner)",
        f"""CREATE TABLE labels (
            id {t['text']} PRIMARY KEY, prompt_id {t['text']} NOT NULL, prompt {t['text']} NOT NULL,
            model {t['text']} NOT NULL, score {t['real']} NOT NULL, cost_usd {t['real']}, energy_j {t['real']},
            source {t['text']} NOT NULL, ts {t['real']} NOT NULL, app {t['text']}, request_id {t['text']}
        )""",
        "CREATE INDEX labels_ts ON labels (ts)",
        f"""CREATE TABLE routers (
            version {t['text']} PRIMARY KEY, created_at {t['real']} NOT NULL, promoted {t['bool']} NOT NULL,
            serving_score {t['real']}, candidate_score {t['real']}, detail {t['text']} NOT NULL,
            body {t['text']} NOT NULL
        )""",
        "CREATE INDEX routers_created ON routers (created_at)",
    ]


def m0007_cache(dialect: str) -> list[str]:
    """The response cache's part in each trace row: hit/miss/bypass, the request a hit came from, and
    what the served answer had cost (so reports show $ and J saved)."""
    t = _types(dialect)
    return [
        f"ALTER TABLE requests ADD COLUMN cache {t['text']}",
        f"ALTER TABLE requests ADD COLUMN cache_source {t['text']}",
        f"ALTER TABLE requests ADD COLUMN saved_usd {t['real']}",
        f"ALTER TABLE requests ADD COLUMN saved_j {t['real']}",
    ]


MIGRATIONS: list[Migration] = [
    ("0001_requests", m0001_requests),
    ("0002_batch", m0002_batch),
    ("0003_file_chunks", m0003_file_chunks),
    ("0004_key_owners", m0004_key_owners),
    ("0005_access", m0005_access),
    ("0006_flywheel", m0006_flywheel),
    ("0007_cache", m0007_cache),
]


def apply_migrations(conn: Any, *, dialect: str) -> list[str]:
    """Apply the migrations this database lacks, in order; returns the names applied."""
    if dialect == "postgresql":
        with conn.transaction():
            return _apply(conn, dialect)
    return _apply(conn, dialect)


def _apply(conn: Any, dialect: str) -> list[str]:
    cur = conn.cursor()
    if dialect == "postgresql":
        # Replicas starting together must not race on the schema.
        cur.execute("SELECT pg_advisory_xact_lock(727274)")
    cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at "
                + ("DOUBLE PRECISION" if dialect == "postgresql" else "REAL") + " NOT NULL)")
    cur.execute("SELECT name FROM schema_migrations")
    done = {row[0] for row in cur.fetchall()}
    applied = []
    mark = "%s" if dialect == "postgresql" else "?"
    for name, migration in MIGRATIONS:
        if name in done:
            continue
        for statement in migration(dialect):
            cur.execute(statement)
        cur.execute(f"INSERT INTO schema_migrations (name, applied_at) VALUES ({mark}, {mark})",
                    (name, time.time()))
        applied.append(name)
    if dialect == "sqlite":
        conn.commit()
    return applied
