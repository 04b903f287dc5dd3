"""The ``wattwise`` command line.

Usage::

    $ wattwise serve --config wattwise.toml
    $ wattwise report --json
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wattwise.access.cli import keys_command
from wattwise.cache.cli import cache_eval_command
from wattwise.exceptions import WattwiseError
from wattwise.routing.cli import eval_command, train_command
from wattwise.routing.flysim_cli import flysim_command
from wattwise.sim.cli import plan_command, simulate_command


@click.group()
@click.version_option(package_name="wattwise")
def main() -> None:
    """wattwise: an OpenAI-compatible LLM gateway metering tokens, dollars and joules."""


def fail(exc: WattwiseError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(2)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config; without it, the built-in local fleet on ./wattwise.db.")
@click.option("--host", default=None, help="Interface to bind (default from config, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default from config, 8000).")
@click.option("--log-level", default="warning", show_default=True)
def serve(config_path: str | None, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the OpenAI-compatible API."""
    import os

    import uvicorn

    from wattwise.access.auth import Authenticator, check_bind
    from wattwise.api.app import create_app
    from wattwise.build import build_gateway
    from wattwise.config import default_config, load_config
    from wattwise.inprocess import HEADER_TIMEOUT_S, GatewayServer, header_deadline_protocol
    from wattwise.store.access import AccessStore
    from wattwise.store.sql import opened

    try:
        config = load_config(config_path) if config_path else default_config()
        # The safe default: no keys and no master key means loopback only (or [auth] mode = "none").
        with opened(config.store.url) as store:
            auth = Authenticator(store=AccessStore(store=store), auth=config.auth, environ=os.environ)
            auth.load()
            check_bind(auth, host=host or config.server.host)
        gateway = build_gateway(config, config_dir=Path(config_path).parent if config_path else ".")
    except WattwiseError as exc:
        fail(exc)
        return
    # Headers must arrive within 10 s (uvicorn has no such deadline); bodies within read_limited's.
    settings = uvicorn.Config(create_app(gateway), host=host or config.server.host,
                              port=port or config.server.port, log_level=log_level, access_log=False,
                              timeout_graceful_shutdown=config.server.shutdown_grace_s,
                              http=header_deadline_protocol(HEADER_TIMEOUT_S))
    GatewayServer(settings, on_exit=gateway.begin_shutdown).run()


def parse_since(text: str | None) -> float | None:
    """``30m``, ``2h``, ``7d``, an epoch number or an ISO date/time (UTC) → epoch seconds."""
    import re
    import time
    from datetime import UTC, datetime

    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time() - float(match.group(1)) * scale
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter("use 30m, 2h, 7d, an epoch time or an ISO date", param_hint="--since") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _store_and_config(store_url: str | None, config_path: str | None) -> tuple[str, object | None]:
    from wattwise.config import load_config

    config = load_config(config_path) if config_path else None
    url = store_url or (config.store.url if config else "sqlite:///wattwise.db")
    return url, config


@main.command()
@click.option("--store", "store_url", default=None, help="Store URL (default: the config's, else ./wattwise.db).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Config whose store and prices to use.")
@click.option("--since", default=None, help="Only requests since: 30m, 2h, 7d, epoch or ISO time.")
@click.option("--by", type=click.Choice(["model", "tag", "hour", "key", "team"]), default="model",
              show_default=True, help="Group by model, tag, hour, API key or team.")
@click.option("--baseline", default=None, help="A configured model: what the traffic would have cost on it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG of spend and tokens/J.")
def report(store_url: str | None, config_path: str | None, since: str | None, by: str,
           baseline: str | None, as_json: bool, plot: str | None) -> None:
    """Requests, tokens, $, J, tokens/J and latency from the trace store."""
    import json

    from wattwise.config import Config
    from wattwise.gateway import price_of
    from wattwise.reports.usage import format_table, plot_report, summarize
    from wattwise.store.sql import opened

    try:
        url, config = _store_and_config(store_url, config_path)
        price = None
        if baseline:
            if not isinstance(config, Config) or baseline not in config.models:
                raise click.BadParameter("needs --config naming that model", param_hint="--baseline")
            price = price_of(config.models[baseline])
            if price is None:
                raise click.BadParameter(f"model {baseline!r} has no price", param_hint="--baseline")
        with opened(url) as store:
            rows = store.fetch(since=parse_since(since))
    except WattwiseError as exc:
        fail(exc)
        return
    lines = summarize(rows, by=by, baseline=price)
    if plot:
        plot_report(lines, plot)
    if as_json:
        click.echo(json.dumps({"store": url, "by": by, "baseline": baseline,
                               "lines": [line.to_json() for line in lines]}))
    else:
        click.echo(format_table(lines))


@main.command()
@click.option("--store", "store_url", default=None, help="Store URL (default: the config's, else ./wattwise.db).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--format", "fmt", type=click.Choice(["outcomes"]), default="outcomes", show_default=True)
@click.option("--since", default=None)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (.jsonl or .jsonl.gz).")
def export(store_url: str | None, config_path: str | None, fmt: str, since: str | None, out: str) -> None:
    """Write scored requests from the store in the outcomes format (router training data)."""
    from wattwise.outcomes import write_outcomes
    from wattwise.store.export import to_outcomes
    from wattwise.store.sql import opened

    try:
        url, _ = _store_and_config(store_url, config_path)
        with opened(url) as store:
            rows, skipped = to_outcomes(store.fetch(since=parse_since(since)))
    except WattwiseError as exc:
        fail(exc)
        return
    count = write_outcomes(out, rows)
    click.echo(f"wrote {count} outcomes to {out} ({skipped} requests skipped: unscored, failed or "
               "stored without content)", err=True)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for demo.png and demo.json.")
@click.option("--limit", type=int, default=None, help="Only the first N prompts of the replay set.")
@click.option("--no-live", is_flag=True, help="Skip the local llama.cpp models.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def demo(out_dir: str, limit: int | None, no_live: bool, as_json: bool) -> None:
    """Offline tour: replay fleet (single models and auto), local models, report and plot."""
    import json

    from wattwise.demo import run_demo
    from wattwise.reports.usage import Line, format_table

    try:
        result = run_demo(out_dir=Path(out_dir), limit=limit, live=not no_live)
    except WattwiseError as exc:
        fail(exc)
        return
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(format_table([Line(**line) for line in result["lines"]]))
    summary = result["summary"]
    best = summary["best_single"]
    click.echo(f"\nbest single model: {best['model']}  quality {best['quality']:.3f}  cost ${best['cost_usd']:.4f}")
    if "auto" in summary:
        auto = summary["auto"]
        click.echo(f"auto ({', '.join(result['auto_policy'])}): quality {auto['quality']:.3f}  "
                   f"cost ${auto['cost_usd']:.4f}  savings {auto['savings_vs_best_single']:.1%} "
                   f"against the best single model")
    for answer in result["live"]:
        mode = "stream" if answer["stream"] else "plain"
        cache = f" cache {answer['cache']}" if answer.get("cache") else ""
        click.echo(f"[{answer['model']} {mode} {answer['seconds']}s{cache}] {answer['prompt']} -> "
                   f"{answer['answer'][:100]!r}")
    click.echo(f"\nplot: {result['plot']}")


main.add_command(train_command)
main.add_command(eval_command)
main.add_command(simulate_command)
main.add_command(plan_command)
main.add_command(keys_command)
main.add_command(flysim_command)
main.add_command(cache_eval_command)


if __name__ == "__main__":
    main()
