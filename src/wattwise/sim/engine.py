"""The discrete-event simulator: a trace replayed through the real scheduler on modelled replicas.

Time is a :class:`~wattwise.scheduling.clock.VirtualClock`. Admission, replica choice, the priority
queue, per-model limits and batch preemption are the gateway's own
:class:`~wattwise.scheduling.scheduler.Scheduler` and
:class:`~wattwise.scheduling.batchfill.BatchFiller`; the only modelled part is the backend, a
:class:`SimReplica` per replica (continuous batching with chunked prefill on one compute lane):

* every running sequence gains one token per decode step; the pure decode step time and the power
  depend on the running batch size (:meth:`~wattwise.sim.profiles.StepProfile.decode_step_s`: the
  measured step less the benchmark's own prefill share, looked up in a table);
* prefill shares the GPU with decoding. Each admitted sequence adds its prompt's prefill time
  (compute-bound: ``2 · active params`` FLOPs a token at ``prefill_mfu`` of peak dense bf16) to the
  replica's queue of prefill work; while that queue is not empty every step carries up to
  ``prefill_chunk_tokens`` of it (vLLM's chunked prefill), so a step lasts ``decode step + chunk``
  and decoding slows down by exactly the prefill time spent. Interactive prefill goes before batch
  prefill. A re-admitted (evicted) batch job prefills its prompt and the tokens it had made again
  (recompute, as vLLM V1 preempts);
* a sequence decodes once its own prompt is through; its first token comes one decode step later;
* the replica draws its busy power (at the running batch size) while it decodes or prefills, and
  its GPUs' idle power when nothing runs;
* between events the batch is constant, so the engine jumps straight to the next completion instead of
  stepping token by token (events per request: one arrival, one completion).

Usage::

    result = simulate(fleet=fleet, trace=trace, profiles=profiles, batch_fill=True)
    result.summary()["utilization"]
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from wattwise.scheduling.batchfill import BatchFiller
from wattwise.scheduling.clock import VirtualClock
from wattwise.scheduling.pool import Replica, ReplicaPool
from wattwise.scheduling.queue import INTERACTIVE
from wattwise.scheduling.scheduler import Lease, ModelPolicy, Scheduler, Ticket
from wattwise.sim.fleet import Fleet
from wattwise.sim.profiles import StepProfile
from wattwise.sim.results import Result
from wattwise.sim.traces import Trace

EPS = 1e-6


class Seq:
    """One sequence on a replica (an interactive request, or a batch job's current run)."""

    __slots__ = ("arrival", "cancelled", "decode_at", "first", "job", "lease", "out", "prefill")

    def __init__(self, *, arrival: float, out: int, lease: Lease, job: Job | None = None) -> None:
        self.arrival = arrival
        self.out = out
        self.lease = lease
        self.job = job
        self.first = 0.0
        self.decode_at = 0.0
        self.prefill = 0.0
        self.cancelled = False


@dataclass(kw_only=True, eq=False)
class Job:
    """A deferrable batch request: tokens still to generate, its deadline, its current sequence."""

    input_tokens: int
    remaining: int
    deadline: float
    seq: Seq | None = None


class SimReplica:
    """The modelled backend of one replica: decode steps and chunked prefill on one compute lane.

    ``work`` is the queued prefill (GPU seconds), ``work_i`` its interactive part (done first);
    ``counter`` counts decode steps since the start (every running sequence gains one per step).
    While ``work`` is queued a step lasts ``steps[b] + chunk`` and drains ``chunk`` of it, so the
    counter moves by drained work ÷ ``chunk`` whatever the batch size.
    """

    __slots__ = ("b", "busy", "chunk", "counter", "energy", "heap", "idle_w", "limit", "occ", "per_token",
                 "steps", "t_last", "version", "watts", "work", "work_i")

    def __init__(self, *, profile: StepProfile, limit: int, mfu: float, chunk_tokens: int = 8192) -> None:
        self.steps, self.watts = profile.table(limit, mfu=mfu)
        self.idle_w = profile.idle_w
        self.per_token = profile.prefill_s(1, mfu=mfu)
        self.chunk = max(chunk_tokens * self.per_token, 1e-9)
        self.limit = limit
        self.b = 0
        self.counter = 0.0
        self.t_last = 0.0
        self.energy = 0.0
        self.occ = 0.0  # ∫ running sequences dt
        self.busy = 0.0  # GPU seconds of prefill charged
        self.work = 0.0
        self.work_i = 0.0
        self.heap: list[tuple[float, int, Seq]] = []
        self.version = 0

    def advance(self, now: float) -> None:
        dt = now - self.t_last
        if dt <= 0.0:
            return
        b = self.b
        if b:
            if self.work > 0.0:
                self._mixed(dt, self.steps[b])
            else:
                self.counter += dt / self.steps[b]
            self.energy += self.watts[b] * dt
            self.occ += b * dt
        else:
            self.energy += self.idle_w * dt
        self.t_last = now

    def _mixed(self, dt: float, step: float) -> None:
        """``dt`` seconds of steps that each carry a prefill chunk, until the queued prefill runs out."""
        chunk, work = self.chunk, self.work
        period = step + chunk
        drain = work * period / chunk
        if dt < drain:
            done = dt * chunk / period
            self.counter += dt / period
            self.work = work - done
            self.work_i = self.work_i - done if self.work_i > done else 0.0
        else:
            self.counter += work / chunk + (dt - drain) / step
            self.work = self.work_i = 0.0

    def finish_time(self, steps: float) -> float:
        """When ``steps`` more decode steps are done, if nothing changes before."""
        step = self.steps[self.b]
        work = self.work
        if work <= 0.0:
            return self.t_last + steps * step
        chunk = self.chunk
        if steps <= work / chunk:  # every one of these steps still carries a prefill chunk
            return self.t_last + steps * (step + chunk)
        return self.t_last + work + steps * step

    def refund(self, seq: Seq) -> None:
        """An evicted batch sequence: the part of its prefill not yet done is not done at all.

        The newest batch sequence (the one evicted) is last in the queue: interactive work is ahead
        and batch work is first-in first-out.
        """
        left = min(seq.prefill, self.work - self.work_i)
        if left > 0.0:
            self.work -= left
            self.busy -= left


@dataclass(kw_only=True)
class _Stats:
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    tokens: int = 0
    batch_tokens: int = 0
    batch_done: int = 0
    batch_on_time: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, utilization, watts)


class Engine:
    """One simulation run; build it, then :meth:`run`."""

    def __init__(self, *, fleet: Fleet, profiles: dict[str, StepProfile], trace: Trace,
                 batch_fill: bool = False, choice: str = "least-tokens", sample_s: float = 600.0) -> None:
        self.fleet = fleet
        self.trace = trace
        self.clock = VirtualClock()
        self.profiles = profiles
        self.sample_s = sample_s
        self.replicas: list[SimReplica] = []
        self.scheduler = Scheduler(clock=self.clock, pools=self._pools(choice), policies=self._policies(batch_fill))
        self.events: list[tuple[float, int, int, SimReplica]] = []
        self.firsts: list[tuple[float, int, Lease]] = []
        self.stats = _Stats()
        self.open = 0  # interactive requests admitted or queued, not finished
        self.model_names = list(fleet.models)
        self.fillers = self._fillers() if batch_fill else []
        self.batch_jobs = sum(1 for f in self.fillers for _ in range(len(f)))

    def _pools(self, choice: str) -> dict[str, ReplicaPool]:
        pools = {}
        mfu, chunk = self.fleet.fleet.prefill_mfu, self.fleet.fleet.prefill_chunk_tokens
        for name, spec in self.fleet.models.items():
            members = []
            for i in range(spec.replicas):
                sim = SimReplica(profile=self.profiles[name], limit=spec.batch_limit, mfu=mfu, chunk_tokens=chunk)
                self.replicas.append(sim)
                members.append(Replica(model=name, index=i, backend=sim, limit=spec.batch_limit))
            pools[name] = ReplicaPool(model=name, replicas=members, choice=choice)
        return pools

    def _policies(self, batch_fill: bool) -> dict[str, ModelPolicy]:
        return {name: ModelPolicy(max_concurrency=spec.max_concurrency, fallback=tuple(spec.fallback),
                                  preempt_batch=batch_fill, batch_reserve=self.fleet.batch.reserve)
                for name, spec in self.fleet.models.items()}

    def _fillers(self) -> list[BatchFiller]:
        backlog = self.fleet.batch
        model = backlog.model or self.model_names[0]
        deadline = backlog.deadline_h * 3600.0
        tokens = backlog.input_tokens + backlog.output_tokens
        jobs = ((Job(input_tokens=backlog.input_tokens, remaining=backlog.output_tokens, deadline=deadline),
                 tokens, deadline) for _ in range(backlog.jobs))
        return [BatchFiller(scheduler=self.scheduler, model=model, start=self._start_job, preempted=self._preempted,
                            source=jobs, pending=backlog.jobs)]

    # -- the modelled backend ------------------------------------------------------------------

    def _admit(self, seq: Seq, prefill_tokens: int, now: float) -> None:
        rep: SimReplica = seq.lease.replica.backend
        rep.advance(now)
        prefill = seq.prefill = prefill_tokens * rep.per_token
        rep.busy += prefill
        rep.work += prefill
        if seq.job is None:
            rep.work_i += prefill
            ahead = rep.work_i  # interactive prefill jumps the batch prefill queued before it
        else:
            ahead = rep.work
        b = rep.b = rep.b + 1
        step, chunk = rep.steps[b], rep.chunk
        # Decode steps tick at one per drained chunk while prefill is queued, so this sequence starts
        # decoding ``ahead / chunk`` steps from now (batch work that interactive work later jumps
        # ahead of starts a little early: a few steps, ignored).
        seq.decode_at = rep.counter + ahead / chunk
        seq.first = now + ahead * (step + chunk) / chunk + step
        heapq.heappush(rep.heap, (seq.decode_at + seq.out, id(seq), seq))
        if seq.job is None:
            heapq.heappush(self.firsts, (seq.first, id(seq), seq.lease))
        self._reschedule(rep)

    def _reschedule(self, rep: SimReplica) -> None:
        rep.version += 1
        heap = rep.heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap:
            left = heap[0][0] - rep.counter
            t = rep.finish_time(left if left > 0.0 else 0.0)
            heapq.heappush(self.events, (t, rep.version, id(rep), rep))
        elif rep.work > 0.0:  # left over by the early start noted in _admit: nobody waits for it
            rep.busy -= rep.work
            rep.work = rep.work_i = 0.0

    def _start_request(self, lease: Lease) -> bool:
        arrival, inp, out = lease.tag
        self._admit(Seq(arrival=arrival, out=out, lease=lease), inp, self.clock.t)
        return True

    def _start_job(self, lease: Lease, job: Job) -> None:
        seq = Seq(arrival=self.clock.t, out=job.remaining, lease=lease, job=job)
        job.seq = seq
        self._admit(seq, job.input_tokens, self.clock.t)

    def _preempted(self, lease: Lease, job: Job) -> None:
        """A batch sequence evicted for interactive work: keep what it generated, free its slot."""
        seq = job.seq
        assert seq is not None
        rep: SimReplica = lease.replica.backend
        rep.advance(self.clock.t)
        made = int(min(seq.out, max(0.0, rep.counter - seq.decode_at)))
        job.remaining -= made
        job.input_tokens += made  # prompt and tokens made are prefilled again on resumption (recompute)
        self.stats.batch_tokens += made
        seq.cancelled = True
        rep.refund(seq)
        rep.b -= 1
        self._reschedule(rep)

    # -- events --------------------------------------------------------------------------------

    def _arrive(self, model: str, arrival: float, inp: int, out: int) -> None:
        firsts = self.firsts
        while firsts and firsts[0][0] <= arrival:  # first tokens since the last decision, told lazily
            self.scheduler.first_token(heapq.heappop(firsts)[2])
        self.open += 1
        tag = (arrival, inp, out)
        lease = self.scheduler.try_acquire(model, tokens=inp + out, prompt=inp, priority=INTERACTIVE, tag=tag)
        if lease is not None:
            self._start_request(lease)
        else:
            self.scheduler.submit(Ticket(model=model, tokens=inp + out, prompt=inp, priority=INTERACTIVE,
                                         grant=self._start_request, tag=tag))

    def _complete(self, rep: SimReplica, now: float) -> None:
        rep.advance(now)
        heap, stats = rep.heap, self.stats
        ttft, tpot, release = stats.ttft.append, stats.tpot.append, self.scheduler.release
        limit = rep.counter + EPS
        while heap and heap[0][0] <= limit:
            seq = heapq.heappop(heap)[2]
            if seq.cancelled:
                continue
            rep.b -= 1
            job = seq.job
            if job is None:
                self.open -= 1
                stats.tokens += seq.out
                ttft(seq.first - seq.arrival)
                tpot((now - seq.first) / (seq.out - 1) if seq.out > 1 else 0.0)
            else:
                stats.batch_tokens += seq.out
                stats.batch_done += 1
                stats.batch_on_time += now <= job.deadline
            release(seq.lease, ok=True)
        self._reschedule(rep)

    def _sample(self, t: float, last: list[float]) -> None:
        occ = 0.0
        for rep in self.replicas:
            rep.advance(t)
            occ += rep.occ / rep.limit
        energy = sum(rep.energy for rep in self.replicas)
        dt = t - last[0]
        if dt > 0:
            self.stats.samples.append((t, (occ - last[1]) / (len(self.replicas) * dt), (energy - last[2]) / dt))
        last[:] = [t, occ, energy]

    def run(self) -> Result:
        trace, clock, events = self.trace, self.clock, self.events
        times = trace.arrival_s.tolist()
        inputs = trace.input_tokens.tolist()
        outputs = trace.output_tokens.tolist()
        models = trace.model
        default = self.model_names[0]
        known = set(self.model_names)
        end = trace.duration_s
        fillers = self.fillers
        n, i = len(times), 0
        next_sample, last = self.sample_s, [0.0, 0.0, 0.0]
        for filler in fillers:
            filler.pump()
        while True:
            t_arr = times[i] if i < n else math.inf
            t_evt = events[0][0] if events else math.inf
            t = t_arr if t_arr <= t_evt else t_evt
            if t == math.inf or (i >= n and self.open == 0 and t >= end):
                break
            while t >= next_sample:
                self._sample(next_sample, last)
                if fillers and next_sample < end:
                    for filler in fillers:
                        filler.pump()
                next_sample += self.sample_s
            clock.t = t
            if t_arr <= t_evt:
                model = default if models is None or models[i] not in known else models[i]
                self._arrive(model, t, inputs[i], outputs[i])
                i += 1
                continue
            _, version, _, rep = heapq.heappop(events)
            if version != rep.version:
                continue
            self._complete(rep, t)
            if fillers and t < end:
                for filler in fillers:
                    filler.pump()
        t_end = max(end, clock.t)
        if t_end > last[0]:
            self._sample(t_end, last)
        return self._result(t_end)

    def _result(self, t_end: float) -> Result:
        reps = self.replicas
        for rep in reps:
            rep.advance(t_end)
        gpu_hours = sum(spec.replicas * spec.gpus_per_replica * (spec.usd_per_gpu_hour if spec.usd_per_gpu_hour
                        is not None else self.profiles[name].gpu.usd_per_hour)
                        for name, spec in self.fleet.models.items()) * t_end / 3600.0
        stats = self.stats
        return Result(requests=len(self.trace), duration_s=t_end, ttft=stats.ttft, tpot=stats.tpot,
                      tokens=stats.tokens, batch_tokens=stats.batch_tokens, batch_jobs=self.batch_jobs,
                      batch_done=stats.batch_done, batch_on_time=stats.batch_on_time,
                      utilization=sum(r.occ / r.limit for r in reps) / (len(reps) * t_end) if t_end else 0.0,
                      energy_j=sum(r.energy for r in reps), usd=gpu_hours, slo=self.fleet.slo,
                      samples=stats.samples, evictions=sum(f.evictions for f in self.fillers),
                      prefill_share=sum(r.busy for r in reps) / (len(reps) * t_end) if t_end else 0.0,
                      profiles={name: p.source for name, p in self.profiles.items()})


def simulate(*, fleet: Fleet, trace: Trace, profiles: dict[str, StepProfile], batch_fill: bool = False,
             choice: str = "least-tokens") -> Result:
    """Run one simulation and return its :class:`~wattwise.sim.results.Result`."""
    return Engine(fleet=fleet, profiles=profiles, trace=trace, batch_fill=batch_fill, choice=choice).run()
