"""The flywheel's tables in the trace store: a durable queue of label jobs, the labels, and the routers.

``label_jobs`` is a sibling of the Batch API's ``batch_lines`` with the same lease semantics: a
runner claims jobs with a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: ``BEGIN
IMMEDIATE``), each claim bumps ``attempts``, and a result is accepted only from the claim that
still holds the job; the job's end and its labels are written in one transaction, so a job whose
lease passed to another replica never adds its labels twice. A separate table, not batch lines:
label jobs have no batch, file, completion window or OpenAI-visible status, and they must never
appear in ``GET /v1/batches``.

``labels`` holds one judged result per row (``source`` ``judge`` or ``shadow``); feedback labels
are read from the trace rows' ``score`` (``POST /v1/wattwise/feedback``). ``routers`` keeps every
router the retrain built, promoted or not, so replicas and restarts serve the newest promoted one.

Usage::

    labels = LabelStore(store=open_store("sqlite:///wattwise.db"))
    labels.add_jobs(plan.jobs(...), now=time.time())
    for claim in labels.claim(owner="replica-1", limit=4, lease_s=30, now=time.time()):
        labels.finish(claim, owner="replica-1", rows=rows, error=None, now=time.time())
    rows = labels.labels()                 # judge, shadow and feedback labels, oldest first
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from wattwise.backends.base import ChatRequest
from wattwise.routing.flywheel import LabelJob, LabelRow
from wattwise.store.query import Query, Transactional
from wattwise.store.records import clean_text

LABEL_TAG = "label:"  # trace rows of judge and shadow calls are tagged label:judge / label:shadow
LABEL_COLUMNS = tuple(f.name for f in fields(LabelRow))


@dataclass(frozen=True, kw_only=True)
class JobClaim:
    """A label job this runner holds; ``attempt`` fences its result against a later claim."""

    id: str
    job: LabelJob
    attempt: int


@dataclass(frozen=True, kw_only=True)
class RouterRow:
    """A router the retrain built: its version, when, whether it was promoted, and why."""

    version: str
    created_at: float
    promoted: bool
    serving_score: float | None
    candidate_score: float | None
    detail: str
    body: str  # the router file's JSON


class LabelStore(Transactional):
    """Label jobs, labels and routers over a :class:`TraceStore`'s connections (one per thread).

    Every method blocks on the database: call it from a worker thread in async code. It is also a
    :class:`~wattwise.routing.flywheel.LabelSink` (``add``).
    """

    label = "label store"

    # -- the queue -------------------------------------------------------------------------------

    def add_jobs(self, jobs: Sequence[LabelJob], *, now: float) -> list[str]:
        """Queue jobs (``pending``); returns their ids."""
        # Ids sort as queued (time, then place in the call): claims take jobs oldest first.
        stamp, salt = f"{int(now * 1e6):016x}", uuid.uuid4().hex[:12]
        rows = [(f"lj_{stamp}{i:06x}{salt}", now, job.kind, _clean(json.dumps(job.to_json(), ensure_ascii=False)))
                for i, job in enumerate(jobs)]
        with self._tx() as q:
            q.many("INSERT INTO label_jobs (id, created_at, kind, body, state, attempts) "
                   "VALUES (?, ?, ?, ?, 'pending', 0)", rows)
        return [r[0] for r in rows]

    def claim(self, *, owner: str, limit: int, lease_s: float, now: float) -> list[JobClaim]:
        """Take up to ``limit`` runnable jobs (pending, or running with a lapsed lease), oldest first."""
        if limit <= 0:
            return []
        lock = " FOR UPDATE SKIP LOCKED" if self.postgresql else ""
        sql = ("UPDATE label_jobs SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1 "
               "WHERE id IN (SELECT id FROM label_jobs WHERE state = 'pending' "
               f"OR (state = 'running' AND lease_until < ?) ORDER BY created_at, id LIMIT ?{lock}) "
               "RETURNING id, body, attempts, created_at")
        with self._tx() as q:
            rows = q.run(sql, (owner, now + lease_s, now, limit)).all()
        rows.sort(key=lambda r: (r[3], r[0]))
        return [JobClaim(id=i, job=LabelJob.from_json(json.loads(body)), attempt=int(a)) for i, body, a, _ in rows]

    def heartbeat(self, claims: Sequence[JobClaim], *, owner: str, lease_until: float) -> None:
        """Extend the leases of the jobs ``owner`` still runs."""
        with self._tx() as q:
            q.many("UPDATE label_jobs SET lease_until = ? WHERE id = ? AND owner = ? AND attempts = ? "
                   "AND state = 'running'", [(lease_until, c.id, owner, c.attempt) for c in claims])

    def finish(self, claim: JobClaim, *, owner: str, rows: Sequence[LabelRow], error: str | None,
               now: float) -> bool:
        """End a job and store its labels in one transaction; False (nothing stored) if the claim was lost."""
        state = "failed" if error is not None else "done"
        with self._tx() as q:
            if q.run("UPDATE label_jobs SET state = ?, error = ?, finished_at = ?, lease_until = NULL "
                     "WHERE id = ? AND owner = ? AND attempts = ? AND state = 'running'",
                     (state, error, now, claim.id, owner, claim.attempt)).rowcount != 1:
                return False
            self._insert(q, rows)
        return True

    def skip(self, claim: JobClaim, *, owner: str, why: str, now: float) -> bool:
        """Drop a job without running it (today's labelling budget is spent)."""
        return self.finish(claim, owner=owner, rows=(), error=f"skipped: {why}", now=now)

    def release(self, *, owner: str) -> int:
        """Hand back the jobs ``owner`` holds (a graceful stop), so another runner takes them at once."""
        with self._tx() as q:
            return q.run("UPDATE label_jobs SET state = 'pending', lease_until = NULL "
                         "WHERE owner = ? AND state = 'running'", (owner,)).rowcount

    def purge(self, *, before: float) -> int:
        """Delete jobs that ended before ``before`` (their labels stay); returns how many."""
        with self._tx() as q:
            return q.run("DELETE FROM label_jobs WHERE state IN ('done', 'failed') AND finished_at < ?",
                         (before,)).rowcount

    def counts(self) -> dict[str, int]:
        """Jobs by state: ``{"pending": 3, "done": 10, ...}``."""
        rows = self._query().run("SELECT state, COUNT(*) FROM label_jobs GROUP BY state").all()
        return {state: int(n) for state, n in rows}

    # -- labels ----------------------------------------------------------------------------------

    def add(self, row: LabelRow) -> None:
        with self._tx() as q:
            self._insert(q, [row])

    def _insert(self, q: Query, rows: Sequence[LabelRow]) -> None:
        cols = ("id", *LABEL_COLUMNS)
        q.many(f"INSERT INTO labels ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
               [("lb_" + uuid.uuid4().hex, *(_clean(getattr(r, c)) for c in LABEL_COLUMNS)) for r in rows])

    def labels(self, *, since: float | None = None, feedback: bool = True) -> list[LabelRow]:
        """Judge and shadow labels, plus feedback scores on served requests, oldest first."""
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        rows = self._query().run(f"SELECT {', '.join(LABEL_COLUMNS)} FROM labels {where} ORDER BY ts, id",
                                 args).all()
        out = [LabelRow(**dict(zip(LABEL_COLUMNS, r, strict=True))) for r in rows]
        if feedback:
            out += self.feedback(since=since)
        return sorted(out, key=lambda r: r.ts)

    def feedback(self, *, since: float | None = None) -> list[LabelRow]:
        """Scores clients sent for served requests (not for the flywheel's own calls)."""
        sql = ("SELECT id, ts, model, tag, messages, score, cost_usd, energy_j, prompt_hash FROM requests "
               "WHERE score IS NOT NULL AND status = 'ok' AND messages IS NOT NULL AND model IS NOT NULL "
               "AND (tag IS NULL OR tag NOT LIKE ?)" + (" AND ts >= ?" if since is not None else ""))
        args = (LABEL_TAG + "%", *((since,) if since is not None else ()))
        out = []
        for rid, ts, model, tag, messages, score, cost, energy, phash in self._query().run(sql, args).all():
            prompt = _prompt(messages)
            if prompt is not None:
                out.append(LabelRow(prompt_id=phash or rid, prompt=prompt, model=model, score=float(score),
                                    cost_usd=cost, energy_j=energy, source="feedback", ts=float(ts), app=tag,
                                    request_id=rid))
        return out

    def count(self, *, since: float | None = None) -> int:
        """Judge and shadow labels stored (since ``since``)."""
        where, args = ("WHERE ts >= ?", (since,)) if since is not None else ("", ())
        return int(self._query().run(f"SELECT COUNT(*) FROM labels {where}", args).all()[0][0])

    def spent(self, *, since: float) -> tuple[float, float]:
        """``(usd, joules)`` the flywheel's own calls (tagged ``label:``) cost since ``since``."""
        row = self._query().run("SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(energy_j), 0) FROM requests "
                                "WHERE tag LIKE ? AND ts >= ?", (LABEL_TAG + "%", since)).all()[0]
        return float(row[0]), float(row[1])

    # -- routers ---------------------------------------------------------------------------------

    def add_router(self, row: RouterRow) -> None:
        with self._tx() as q:
            q.run("INSERT INTO routers (version, created_at, promoted, serving_score, candidate_score, detail, "
                  "body) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                  (row.version, row.created_at, row.promoted, _finite(row.serving_score),
                   _finite(row.candidate_score), row.detail, row.body))

    def routers(self, *, promoted_only: bool = False) -> list[RouterRow]:
        """Routers the retrain built, oldest first (without their bodies unless promoted)."""
        where = " WHERE promoted = ?" if promoted_only else ""
        rows = self._query().run("SELECT version, created_at, promoted, serving_score, candidate_score, detail, "
                                 f"body FROM routers{where} ORDER BY created_at, version",
                                 (True,) if promoted_only else ()).all()
        return [RouterRow(version=v, created_at=float(t), promoted=bool(p), serving_score=s, candidate_score=c,
                          detail=d, body=b) for v, t, p, s, c, d, b in rows]

    def latest_promoted(self) -> RouterRow | None:
        rows = self.routers(promoted_only=True)
        return rows[-1] if rows else None


def _clean(value: Any) -> Any:
    return clean_text(value) if isinstance(value, str) else value


def _finite(value: float | None) -> float | None:
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _prompt(messages: str) -> str | None:
    """The text the router read for this request (all messages joined), as judge labels hold it."""
    try:
        data = json.loads(messages)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        return None
    return ChatRequest(messages=data).prompt_text() or None
