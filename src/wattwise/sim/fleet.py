"""Fleet files (TOML) for the simulator and planner: models on GPUs, batch limits, prices, SLO, backlog.

::

    [fleet]
    name = "m-large on H100"
    profiles = "builtin"                # or a folder of ML.ENERGY files
    prefill_mfu = 0.5                   # prefill runs at this share of peak dense bf16
    prefill_chunk_tokens = 8192         # prompt tokens per step at most (chunked prefill's token budget)

    [models.llama70b]
    profile = "meta-llama/Llama-3.1-70B-Instruct"   # ML.ENERGY model id; or give params_b for a roofline
    gpu = "H100"
    gpus_per_replica = 4
    replicas = 2
    batch_limit = 256
    usd_per_gpu_hour = 2.5              # default: the GPU's stated price
    fallback = []
    trained_as = "meta-llama/llama-2-70b-chat"   # for outcomes traces: the router's name for it,
    price_input = 0.9                   # and the $/Mtok it weighs (input, output)
    price_output = 0.9

    [slo]
    ttft_s = 2.0
    tpot_s = 0.2

    [batch]                             # the deferrable backlog for --batch-fill
    jobs = 100000
    deadline_h = 24
    input_tokens = 1000
    output_tokens = 500
    reserve = 0                         # slots per model kept free of batch work

Errors name the file, the line and the field.

Usage::

    fleet = load_fleet("examples/fleet-m-large.toml")
    fleet.models["llama70b"].replicas
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wattwise.config import find_key_line
from wattwise.exceptions import WattwiseError

if TYPE_CHECKING:
    from wattwise.sim.profiles import ProfileCatalog, StepProfile


class FleetError(WattwiseError):
    """A fleet file that does not parse or names something the simulator cannot model."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, path: str, line: int | None = None, field: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}" + (f" (field '{field}')" if field else ""), param=field)
        self.path, self.line, self.field = path, line, field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetModel(_Strict):
    """One model's serving shape."""

    profile: str | None = None
    gpu: str = "H100"
    gpus_per_replica: int = Field(default=1, ge=1, le=64)
    replicas: int = Field(default=1, ge=1, le=10_000)
    batch_limit: int = Field(default=256, ge=1, le=16_384)
    usd_per_gpu_hour: float | None = Field(default=None, ge=0)
    params_b: float | None = Field(default=None, gt=0)
    active_params_b: float | None = Field(default=None, gt=0)
    bytes_per_param: float = Field(default=2.0, gt=0)
    kv_bytes_per_seq: float | None = Field(default=None, ge=0)
    fallback: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=None, ge=1)
    trained_as: str | None = None
    price_input: float | None = Field(default=None, ge=0)
    price_output: float | None = Field(default=None, ge=0)


class Slo(_Strict):
    ttft_s: float = Field(default=2.0, gt=0)
    tpot_s: float = Field(default=0.2, gt=0)


class Backlog(_Strict):
    jobs: int = Field(default=0, ge=0)
    deadline_h: float = Field(default=24.0, gt=0)
    input_tokens: int = Field(default=1000, ge=1)
    output_tokens: int = Field(default=500, ge=1)
    reserve: int = Field(default=0, ge=0)
    model: str | None = None


class FleetMeta(_Strict):
    name: str = "fleet"
    profiles: str = "builtin"
    prefill_mfu: float = Field(default=0.5, gt=0, le=1)
    prefill_chunk_tokens: int = Field(default=8192, ge=16, le=1_000_000)


class Fleet(_Strict):
    """A whole fleet file."""

    fleet: FleetMeta = FleetMeta()
    models: dict[str, FleetModel] = Field(min_length=1)
    slo: Slo = Slo()
    batch: Backlog = Backlog()


def parse_fleet(text: str, *, path: str = "<fleet>") -> Fleet:
    """Parse and validate fleet TOML; every error names the file, line and field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise FleetError(f"not valid TOML: {exc}", path=path, line=int(match.group(1)) if match else None) from None
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        message = {"extra_forbidden": "unknown field", "missing": "missing required field"}.get(err["type"], err["msg"])
        raise FleetError(message, path=path, line=find_key_line(text, loc), field=".".join(loc)) from None
    _check_names(fleet, text, path)
    return fleet


def _check_names(fleet: Fleet, text: str, path: str) -> None:
    from wattwise.sim.profiles import GPUS

    for name, spec in fleet.models.items():
        if spec.gpu.upper() not in GPUS:
            loc = ("models", name, "gpu")
            raise FleetError(f"unknown GPU {spec.gpu!r} (known: {', '.join(GPUS)})", path=path,
                             line=find_key_line(text, loc), field=".".join(loc))
        for other in spec.fallback:
            if other not in fleet.models:
                loc = ("models", name, "fallback")
                raise FleetError(f"fallback {other!r} is not a model of this fleet", path=path,
                                 line=find_key_line(text, loc), field=".".join(loc))
    if fleet.batch.model is not None and fleet.batch.model not in fleet.models:
        raise FleetError(f"{fleet.batch.model!r} is not a model of this fleet", path=path,
                         line=find_key_line(text, ("batch", "model")), field="batch.model")


def load_fleet(path: str | Path) -> Fleet:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"cannot read fleet file: {exc.strerror}", path=str(p)) from None
    return parse_fleet(text, path=str(p))


def profiles_for(fleet: Fleet, *, text: str = "", path: str = "<fleet>",
                 catalog: ProfileCatalog | None = None) -> dict[str, StepProfile]:
    """Each model's step profile; a model with neither a profile nor roofline parameters is an error."""
    from wattwise.sim.profiles import ProfileCatalog, ProfileError

    if catalog is None:
        source = fleet.fleet.profiles
        catalog = ProfileCatalog.shipped() if source == "builtin" else ProfileCatalog.from_dir(
            Path(path).parent / source if not Path(source).is_absolute() else source)
    out = {}
    for name, spec in fleet.models.items():
        try:
            out[name] = catalog.profile(model=spec.profile or name, gpu=spec.gpu, gpus=spec.gpus_per_replica,
                                        params_b=spec.params_b, active_params_b=spec.active_params_b,
                                        bytes_per_param=spec.bytes_per_param, kv_bytes_per_seq=spec.kv_bytes_per_seq)
        except ProfileError as exc:
            field = "profile" if spec.profile else "params_b"
            loc = ("models", name, field)
            line = find_key_line(text, loc) if text else None
            raise FleetError(exc.message, path=path, line=line, field=".".join(loc)) from None
    return out
