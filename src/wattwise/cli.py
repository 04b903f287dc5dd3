"""The ``wattwise`` command line.

Usage::

    $ wattwise serve --config wattwise.toml
    $ wattwise report --json
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wattwise.exceptions import WattwiseError


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
    import uvicorn

    from wattwise.api.app import create_app
    from wattwise.build import build_gateway
    from wattwise.config import default_config, load_config

    try:
        config = load_config(config_path) if config_path else default_config()
        gateway = build_gateway(config, config_dir=Path(config_path).parent if config_path else ".")
    except WattwiseError as exc:
        fail(exc)
        return
    uvicorn.run(create_app(gateway), host=host or config.server.host, port=port or config.server.port,
                log_level=log_level, access_log=False, timeout_graceful_shutdown=10)
