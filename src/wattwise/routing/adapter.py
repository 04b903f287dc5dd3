"""The trained router as the gateway's route picker for ``auto`` and ``auto:<policy>``.

Candidates come from the config (name, price, ``trained_as``, ``reasoning``); the dial from the
request's ``wattwise`` object. Multi-call policies (cascade, best-of-N) hand the gateway an
executor, so every call they make goes through the gateway and is metered.

Usage::

    picker = load_picker(config)          # the shipped router unless [router] path is set
    gateway = Gateway(config=config, backends=backends, store=store, router=picker)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from wattwise.config import Config
from wattwise.data import resolve
from wattwise.routing import execute
from wattwise.routing.adapt import AppPosterior, app_key
from wattwise.routing.flywheel import router_version
from wattwise.routing.policies import RouteDecision
from wattwise.routing.router import Candidate, Router

if TYPE_CHECKING:
    from wattwise.gateway import CallFn, Decision, Gateway
    from wattwise.request import ChatBody

# Multi-call policies: how each carries out the plan its decision made (the plan already holds the
# per-application adjustment, and the prompt is not routed twice).
PLANS = {"cascade": execute.cascade_calls, "best_of_n": execute.best_of_n_calls}


def candidates_from(config: Config) -> list[Candidate]:
    """One candidate per configured model; a model without a price has unknown cost."""
    out = []
    for name, spec in config.models.items():
        price = spec.price
        out.append(Candidate(name=name, input_usd_per_mtok=price.input if price else None,
                             output_usd_per_mtok=price.output if price else None,
                             trained_as=spec.trained_as, reasoning=spec.reasoning,
                             params_b=spec.params_b, family=spec.family, rating=spec.rating))
    return out


class TrainedPicker:
    """Routes with a trained :class:`Router`; :meth:`swap` replaces it while the gateway serves.

    Usage::

        picker = TrainedPicker(router=Router.default(), candidates=candidates_from(config))
        picker.swap(promotion.candidate)      # the next decision names the new version
    """

    def __init__(self, *, router: Router, candidates: Sequence[Candidate],
                 posterior: AppPosterior | None = None) -> None:
        self._serving = (router, router_version(router))
        self.candidates = list(candidates)
        # Per-application adaptation (routing/adapt.py): the flywheel's labels go to posterior.add.
        self.posterior = posterior

    @property
    def router(self) -> Router:
        return self._serving[0]

    @property
    def version(self) -> str:
        """The serving router's content hash; every decision and hence trace row carries it."""
        return self._serving[1]

    def swap(self, router: Router) -> str:
        """Serve ``router`` from the next decision on (one assignment: a decision sees one router)."""
        self._serving = (router, router_version(router))
        return self._serving[1]

    def pick(self, *, prompt: str, policy: str, body: ChatBody, gateway: Gateway) -> Decision:
        from wattwise.gateway import Decision

        router, version = self._serving  # read once: a swap mid-decision cannot mix two routers
        dial = body.wattwise
        app = app_key(body) if self.posterior is not None else None
        if app is None or self.posterior is None:
            decision = router.route(prompt, self.candidates, policy=policy,
                                    quality_target=dial.quality_target, max_cost_usd=dial.max_cost_usd)
        else:  # the router's estimates, moved toward what this application's labels say
            estimates = self.posterior.adjust(app, router.estimate(prompt, self.candidates))
            decision = router.decide(estimates, policy=policy, quality_target=dial.quality_target,
                                     max_cost_usd=dial.max_cost_usd)
        plan = PLANS.get(policy)
        run: Callable[[CallFn], Awaitable[Any]] | None = None if plan is None else partial(_run_plan, plan, decision)
        return Decision(model=decision.model, policy=decision.policy, reason=decision.reason, execute=run,
                        reasoning_effort=decision.reasoning_effort, router_version=version)


async def _run_plan(plan: Callable[[RouteDecision, execute.CallFn], Awaitable[Any]], decision: RouteDecision,
                    call: CallFn) -> Any:
    async def adapted(model: str) -> execute.Answer:
        got = await call(model)
        return execute.Answer(text=got.text, cost_usd=got.cost_usd, logprob=got.logprob)

    return await plan(decision, adapted)


def load_picker(config: Config, *, config_dir: str = ".") -> TrainedPicker:
    router = Router.load(resolve(config.router.path, base_dir=config_dir)) if config.router.path \
        else Router.default()
    return TrainedPicker(router=router, candidates=candidates_from(config), posterior=AppPosterior())
