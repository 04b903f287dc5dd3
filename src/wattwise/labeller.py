"""The flywheel inside the gateway: label served answers in demand's valleys, retrain, promote.

Three parts, each off the request path:

- **intake** (:meth:`Flywheel.offer`): told of each trace row as the request ends, it asks the
  seeded :class:`~wattwise.routing.flywheel.LabelPlan` which label jobs the request gets and puts
  them in a bounded in-memory list. Cheap and non-blocking: two hashes and an append; the served
  request never waits on a database or a model.
- **runner** (:meth:`Flywheel.tick`): writes queued jobs to the durable ``label_jobs`` queue, then
  claims as many as the headroom allows (the batch runner's rule: what ``[batch] max_in_flight``
  leaves after the requests in flight, capped by ``[flywheel] max_concurrency``) and today's budget
  affords, and runs each through ``gateway.call`` at ``batch`` priority, tagged ``label:judge`` or
  ``label:shadow``: routed, metered and traced like any request.
- **retrain** (:meth:`Flywheel.retrain_now`, on a schedule): every ``retrain_every`` new labels it
  trains a candidate on the shipped outcomes plus the older labels and promotes it only if it beats
  the serving router on the newest labels; the picker swaps routers without a restart and the
  router is kept in the store, so other replicas and restarts serve it too.

Usage::

    flywheel = Flywheel.attach(gateway)        # from gateway.config.flywheel; None when disabled
    await gateway.start()                      # starts the flywheel too
    ...
    promotion = await flywheel.retrain_now()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from wattwise.call import Call, new_request_id
from wattwise.config import FlywheelConfig
from wattwise.exceptions import ConfigError, WattwiseError
from wattwise.outcomes import Outcome
from wattwise.request import ChatBody
from wattwise.routing.adapt import app_key
from wattwise.routing.flywheel import (
    DAY_S,
    DEFAULT_RUBRIC,
    AskResult,
    Judge,
    LabelBudget,
    LabelConfig,
    LabelJob,
    LabelPlan,
    LabelRow,
    LabelSink,
    Promotion,
    Train,
    retrain,
    router_version,
    run_job,
)
from wattwise.routing.router import Router
from wattwise.store.labels import LABEL_TAG, JobClaim, LabelStore, RouterRow
from wattwise.store.records import TraceRecord

if TYPE_CHECKING:
    from wattwise.gateway import Gateway

log = logging.getLogger(__name__)
JOB_KEEP_S = 7 * DAY_S  # finished label jobs are kept this long (their labels for good)


def label_config(config: FlywheelConfig) -> LabelConfig:
    """The pure core's view of ``[flywheel]``."""
    return LabelConfig(judge_model=config.judge_model, judge_share=config.judge_share,
                       shadow_share=config.shadow_share,
                       shadow_models=tuple(config.shadow_models) if config.shadow_models is not None else None,
                       budget_usd_per_day=config.budget_usd_per_day, budget_j_per_day=config.budget_j_per_day,
                       retrain_every=config.retrain_every, holdout_share=config.holdout_share,
                       min_gain=config.min_gain, min_holdout=config.min_holdout, seed=config.seed)


def check_models(config: FlywheelConfig, models: Sequence[str]) -> None:
    """The judge and shadow models must be configured models."""
    if config.judge_model is None:
        raise ConfigError("the flywheel needs a judge model", key="flywheel.judge_model")
    if config.judge_model not in models:
        raise ConfigError(f"{config.judge_model!r} is not a configured model", key="flywheel.judge_model")
    for name in config.shadow_models or ():
        if name not in models:
            raise ConfigError(f"{name!r} is not a configured model", key="flywheel.shadow_models")


class Flywheel:
    """Intake, label runner and scheduled retrain for one gateway replica (see the module docstring).

    ``headroom`` says how many label jobs may start now (the batch runner's rule by default);
    ``train`` fits a router on outcome rows (:func:`~wattwise.routing.train.train_router` by default);
    ``shipped`` loads the shipped outcomes (the ``[flywheel] shipped`` files by default).
    """

    def __init__(self, *, gateway: Gateway, config: FlywheelConfig, queue: LabelStore,
                 headroom: Callable[[], int] | None = None, train: Train | None = None,
                 shipped: Callable[[], Sequence[Outcome]] | None = None, owner: str | None = None) -> None:
        check_models(config, list(gateway.backends))
        self.gateway = gateway
        self.config = config
        self.queue = queue
        self.plan = LabelPlan(config=label_config(config))
        self.judge = Judge(model=config.judge_model or "", rubric=config.rubric or DEFAULT_RUBRIC)
        self.budget = LabelBudget(usd_per_day=config.budget_usd_per_day, j_per_day=config.budget_j_per_day)
        self.headroom = headroom or self.in_flight_headroom
        self.train = train
        self.load_shipped = shipped or partial(shipped_outcomes, config.shipped)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pending: deque[LabelJob] = deque()
        self.dropped = 0  # jobs refused because the intake list was full
        self.running: dict[JobClaim, asyncio.Task[None]] = {}
        self.labelled = 0  # labels this replica stored
        self.lost = 0  # results fenced out because the lease had passed to another runner
        self.promotions: list[Promotion] = []
        # Told of each stored label (the picker's per-application posterior, when it has one).
        self.sinks: list[LabelSink] = []
        self._mean_cost: dict[str, tuple[float, float]] = {}  # per job kind, for the budget's look-ahead
        self._label_count = 0  # labels in the store at the last retrain
        self._checked_at = 0.0
        self._beat_at = 0.0
        self._retraining: asyncio.Task[Promotion | None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, float]:
        """This replica's flywheel figures for ``/metrics``: the label queue, labels stored, spend today."""
        self.budget.left(now=time.time())  # rolls the day over if it has turned
        return {"pending_jobs": len(self.pending), "dropped_jobs": self.dropped, "labels": self.labelled,
                "lost_results": self.lost, "running_jobs": len(self.running), "retrains": len(self.promotions),
                "promotions": sum(1 for p in self.promotions if p.promoted), "label_usd_today": self.budget.usd,
                "label_joules_today": self.budget.joules, "label_usd_per_day": self.budget.usd_per_day}

    @classmethod
    def attach(cls, gateway: Gateway, **kwargs: Any) -> Flywheel | None:
        """A flywheel for ``gateway`` from its ``[flywheel]`` config, hooked in; None when disabled."""
        config = gateway.config.flywheel
        if not config.enabled:
            return None
        flywheel = cls(gateway=gateway, config=config, queue=LabelStore(store=gateway.store), **kwargs)
        gateway.recorder.on_record = flywheel.offer
        posterior = getattr(gateway.router, "posterior", None)
        if posterior is not None and hasattr(posterior, "add"):
            flywheel.sinks.append(posterior)
        gateway.services.append(flywheel)
        return flywheel

    # -- intake (on the request path: cheap, never blocks) ----------------------------------------

    def offer(self, call: Call, record: TraceRecord) -> None:
        """Plan label jobs for a request that just ended; queued in memory, written by the runner."""
        # Only answers the router could have chosen teach it anything; content the caller asked not to
        # store (store_content off) is not stored here either; a cache hit's answer was labelled when made.
        candidates = self.candidates()
        if (record.status != "ok" or record.model not in candidates or record.messages is None
                or (record.tag or "").startswith(LABEL_TAG) or call.outcome is None or record.cache == "hit"):
            return
        jobs = self.plan.jobs(request_id=record.id, prompt_id=record.prompt_hash or record.id, prompt=call.prompt,
                              served_model=record.model, answer=call.outcome.text or "", candidates=candidates,
                              app=app_key(call.body, header_tag=record.tag), cost_usd=record.cost_usd,
                              energy_j=record.energy_j)
        if not jobs:
            return
        if len(self.pending) + len(jobs) > self.config.max_pending:
            self.dropped += len(jobs)
            return
        self.pending.extend(jobs)
        self._wake.set()

    def candidates(self) -> list[str]:
        """The models the router chooses among (the picker's candidates; else every configured model)."""
        picked = getattr(self.gateway.router, "candidates", None)
        if isinstance(picked, list) and picked:
            return [getattr(c, "name", str(c)) for c in picked]
        return list(self.gateway.backends)

    # -- the runner --------------------------------------------------------------------------------

    def in_flight_headroom(self) -> int:
        """The batch runner's rule: what ``[batch] max_in_flight`` leaves after the requests in flight."""
        return self.gateway.config.batch.max_in_flight - sum(self.gateway.in_flight.values())

    def free_slots(self) -> int:
        return max(0, min(self.config.max_concurrency - len(self.running), self.headroom()))

    def affordable(self, now: float) -> bool:
        """Whether today's budget still covers a job of the dearest kind seen so far."""
        usd, joules = max(self._mean_cost.values(), default=(0.0, 0.0))
        return self.budget.allow(usd=usd, joules=joules, now=now)

    async def _db(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        day = (time.time() // DAY_S) * DAY_S
        usd, joules = await self._db(partial(self.queue.spent, since=day))
        self.budget.spend(usd=usd, joules=joules, now=time.time())  # what earlier runs spent today
        self._label_count = await self._db(self.queue.count)
        if self.config.resume:
            await self.follow()
        self._loop_task = asyncio.create_task(self._loop(), name=f"wattwise-flywheel-{self.owner}")

    async def stop(self) -> None:
        """Stop claiming; write queued jobs; let running jobs finish for ``[batch] drain_s``, then hand back."""
        if self._loop_task is None:
            return
        # Asked to stop, not cancelled: the loop ends after its current round (a cancel arriving as
        # wait_for's timeout fired could be swallowed and leave the loop running).
        self._stopping = True
        self._wake.set()
        await self._loop_task
        self._loop_task = None
        if self._retraining is not None:
            self._retraining.cancel()
            await asyncio.gather(self._retraining, return_exceptions=True)
        await self.flush()
        tasks = list(self.running.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.gateway.config.batch.drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._db(partial(self.queue.release, owner=self.owner))

    async def _loop(self) -> None:
        interval = min(self.config.poll_interval_s, self.config.lease_s / 3)
        while not self._stopping:
            try:
                await self.tick()
            except Exception:
                log.exception("flywheel tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

    async def flush(self) -> int:
        """Write the jobs planned since the last flush to the durable queue."""
        jobs = list(self.pending)
        if jobs:
            await self._db(partial(self.queue.add_jobs, jobs, now=time.time()))
            for _ in jobs:
                self.pending.popleft()
        return len(jobs)

    async def tick(self) -> int:
        """One round: queue planned jobs, renew leases, start what headroom and budget allow, maybe retrain."""
        now = time.time()
        await self.flush()
        if self.running and now - self._beat_at >= self.config.lease_s / 3:
            self._beat_at = now
            await self._db(partial(self.queue.heartbeat, list(self.running), owner=self.owner,
                                   lease_until=now + self.config.lease_s))
        started = 0
        free = self.free_slots()
        if free and self.affordable(now):
            claims = await self._db(partial(self.queue.claim, owner=self.owner, limit=free,
                                            lease_s=self.config.lease_s, now=now))
            for claim in claims:
                self.running[claim] = asyncio.create_task(self._run(claim), name=f"label-job-{claim.id}")
            started = len(claims)
        if now - self._checked_at >= self.config.retrain_check_s:
            self._checked_at = now
            await self._maybe_retrain()
        return started

    async def _run(self, claim: JobClaim) -> None:
        try:
            rows, error = await self._labels(claim.job)
            accepted = await self._db(partial(self.queue.finish, claim, owner=self.owner, rows=rows, error=error,
                                              now=time.time()))
            if accepted:
                self.labelled += len(rows)
                for row in rows:
                    for sink in self.sinks:
                        sink.add(row)
            else:
                self.lost += 1
                log.warning("label job %s: lease lost; its labels were not recorded", claim.id)
        except Exception:
            log.exception("label job %s: recording its result failed; it re-runs after its lease", claim.id)
        finally:
            self.running.pop(claim, None)
            self._wake.set()

    async def _labels(self, job: LabelJob) -> tuple[list[LabelRow], str | None]:
        spent = [0.0, 0.0]

        async def ask(model: str, prompt: str) -> AskResult:
            judging = prompt != job.prompt  # run_job asks the judge with the rubric, a shadow with the prompt
            got = await self.ask(model, prompt, kind="judge" if judging else job.kind, judge=judging)
            spent[0] += got.cost_usd or 0.0
            spent[1] += got.energy_j or 0.0
            return got

        try:
            rows = await run_job(job, ask=ask, judge=self.judge, now=time.time)
        except WattwiseError as exc:  # the call recorded it; the job ends failed, not retried
            return [], f"{type(exc).__name__}: {exc.message}"
        finally:
            self._note_cost(job.kind, spent[0], spent[1])
        return rows, None

    def _note_cost(self, kind: str, usd: float, joules: float) -> None:
        old = self._mean_cost.get(kind)
        self._mean_cost[kind] = (usd, joules) if old is None else (0.8 * old[0] + 0.2 * usd,
                                                                   0.8 * old[1] + 0.2 * joules)

    async def ask(self, model: str, prompt: str, *, kind: str, judge: bool = False) -> AskResult:
        """One label call through the gateway: batch priority, tag ``label:<kind>``, metered and traced;
        its cost is charged to the labelling budget."""
        body = ChatBody.model_validate({
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "wattwise": {"priority": "batch"},
            **({"max_tokens": self.config.judge_max_tokens, "temperature": 0.0} if judge else {}),
        })
        request_id = new_request_id()
        call = self.gateway.call(body, request_id=request_id, tag=f"{LABEL_TAG}{kind}")
        call.cancelled_as = ("cancelled", 499, "flywheel stopped")
        try:
            async with call:
                outcome = await call.complete()
        finally:
            out = call.outcome
            self.budget.spend(usd=out.cost_usd if out else None, joules=out.energy.joules if out else None,
                              now=time.time())
        return AskResult(text=outcome.text or "", cost_usd=outcome.cost_usd, energy_j=outcome.energy.joules,
                         request_id=request_id)

    # -- retrain and promote -----------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Gateway model name → the name the router's training data uses (``trained_as``)."""
        return {name: spec.trained_as for name, spec in self.gateway.config.models.items() if spec.trained_as}

    async def _maybe_retrain(self) -> None:
        await self._db(partial(self.queue.purge, before=time.time() - JOB_KEEP_S))
        if self.config.resume:
            await self.follow()
        if self.config.retrain_every <= 0 or self._retraining is not None:
            return
        count = await self._db(self.queue.count)
        if count - self._label_count >= self.config.retrain_every:
            self._retraining = asyncio.create_task(self.retrain_now(), name="wattwise-flywheel-retrain")
            self._retraining.add_done_callback(self._retrained)

    def _retrained(self, task: asyncio.Task[Promotion | None]) -> None:
        self._retraining = None
        if not task.cancelled() and task.exception() is not None:
            log.error("flywheel retrain failed", exc_info=task.exception())

    async def retrain_now(self) -> Promotion | None:
        """Train a candidate on the shipped outcomes plus the labels, and promote it if it is better.

        The training runs in a worker thread; the swap happens on the event loop, between decisions.
        None when the gateway's router cannot be swapped (no trained router configured).
        """
        picker = self.gateway.router
        swap = getattr(picker, "swap", None)
        serving = getattr(picker, "router", None)
        if swap is None or not isinstance(serving, Router):
            log.warning("flywheel: the gateway's router is not a trained router; nothing to retrain")
            return None
        count = await self._db(self.queue.count)
        # Abandoned, not awaited, when the gateway stops: a stop must not wait out a training run.
        promotion = await anyio.to_thread.run_sync(partial(self._retrain, serving), abandon_on_cancel=True)
        self._label_count = count
        self.promotions.append(promotion)
        if promotion.promoted:
            version = swap(promotion.candidate)
            log.info("flywheel: serving router %s (%s)", version, promotion.detail)
        else:
            log.info("flywheel: kept router %s (%s)", router_version(serving), promotion.detail)
        return promotion

    def _retrain(self, serving: Router) -> Promotion:
        c = self.config
        promotion = retrain(serving=serving, labels=self.queue.labels(), shipped=self.load_shipped(),
                            holdout_share=c.holdout_share, aliases=self.aliases(), min_gain=c.min_gain,
                            min_holdout=c.min_holdout, train=self.train)
        candidate = promotion.candidate
        self.queue.add_router(RouterRow(
            version=router_version(candidate), created_at=time.time(), promoted=promotion.promoted,
            serving_score=promotion.serving_score, candidate_score=promotion.candidate_score,
            detail=promotion.detail, body=json.dumps(candidate.to_json(), separators=(",", ":"))))
        return promotion

    async def follow(self) -> str | None:
        """Serve the store's newest promoted router if it is not the one serving (another replica's
        promotion, or one from before a restart); returns the version swapped in."""
        swap = getattr(self.gateway.router, "swap", None)
        if swap is None:
            return None
        row = await self._db(self.queue.latest_promoted)
        if row is None or row.version == getattr(self.gateway.router, "version", None):
            return None
        router = Router.from_json(json.loads(row.body), source=f"router {row.version} in the store")
        log.info("flywheel: serving router %s from the store", row.version)
        return str(swap(router))


def shipped_outcomes(paths: Sequence[str], *, base_dir: str = ".") -> list[Outcome]:
    """The outcomes the router ships trained on (the package's training set when ``paths`` is empty);
    ``builtin:NAME`` names a file shipped in the package."""
    from wattwise.data import resolve
    from wattwise.outcomes import load_outcomes

    return load_outcomes(*(resolve(p, base_dir=base_dir) for p in paths or [SHIPPED_TRAIN]))


SHIPPED_TRAIN = "builtin:outcomes/routerbench_zs.train.jsonl.gz"


def retrain_from_store(url: str, *, out: str, shipped: Sequence[str] = (), aliases: dict[str, str] | None = None,
                       promote: bool = False, holdout_share: float = 0.2, min_gain: float = 0.0,
                       min_holdout: int = 20, train: Train | None = None) -> dict[str, Any]:
    """``wattwise train --store``: a candidate from the store's labels plus ``shipped`` outcomes files,
    compared with the router the store serves (its newest promoted one, else the shipped router).

    The candidate is written to ``out`` either way; with ``promote`` it is also recorded in the store
    (promoted only if it won), where gateways with ``[flywheel] resume`` pick it up. Returns a summary.
    """
    from wattwise.store.sql import opened

    with opened(url) as store:
        queue = LabelStore(store=store)
        latest = queue.latest_promoted()
        serving = Router.from_json(json.loads(latest.body), source=f"router {latest.version} in the store") \
            if latest else Router.default()
        labels = queue.labels()
        promotion = retrain(serving=serving, labels=labels, shipped=shipped_outcomes(shipped),
                            holdout_share=holdout_share, aliases=aliases, min_gain=min_gain,
                            min_holdout=min_holdout, train=train)
        candidate = promotion.candidate
        candidate.save(out)
        version = router_version(candidate)
        if promote:
            queue.add_router(RouterRow(version=version, created_at=time.time(), promoted=promotion.promoted,
                                       serving_score=promotion.serving_score,
                                       candidate_score=promotion.candidate_score, detail=promotion.detail,
                                       body=json.dumps(candidate.to_json(), separators=(",", ":"))))
    return {"out": out, "version": version, "serving_version": router_version(serving),
            "labels": len(labels), "promoted": promotion.promoted, "recorded": promote,
            "serving_score": _finite_or_none(promotion.serving_score),
            "candidate_score": _finite_or_none(promotion.candidate_score),
            "train_rows": promotion.train_rows, "holdout_rows": promotion.holdout_rows, "detail": promotion.detail}


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None
