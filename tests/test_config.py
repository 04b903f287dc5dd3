"""Config parsing: every error names the key and its line."""

from __future__ import annotations

import pytest

from wattwise.config import default_config, find_key_line, load_config, parse_config
from wattwise.exceptions import ConfigError

GOOD = """\
[server]
port = 9000

[store]
url = "sqlite:///x.db"

[models.fast]
backend = "openai_http"
base_url = "http://127.0.0.1:1/v1"
price = { input = 1, output = 2 }
"""


def test_good_config_parses() -> None:
    cfg = parse_config(GOOD)
    assert cfg.server.port == 9000 and cfg.models["fast"].price is not None
    assert cfg.models["fast"].price.output == 2


@pytest.mark.parametrize(("text", "line", "key"), [
    (GOOD.replace("port = 9000", "prot = 9000"), 2, "server.prot"),
    (GOOD.replace("output = 2", "output = -2"), 10, "models.fast.price.output"),
    (GOOD.replace('url = "sqlite:///x.db"', 'url = "mysql://x"'), 5, "store.url"),
    (GOOD.replace('backend = "openai_http"\n', ""), 7, "models.fast.backend"),
    (GOOD.replace("port = 9000", 'port = "high"'), 2, "server.port"),
    (GOOD + "\n[models.auto]\nbackend = \"mock\"\n", None, "models"),
])
def test_errors_name_key_and_line(text: str, line: int | None, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="w.toml")
    assert info.value.key == key
    assert info.value.line == line
    assert key in str(info.value) and str(info.value).startswith("w.toml")


def test_toml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[server]\nport = \n", path="w.toml")
    assert info.value.line == 2


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/wattwise.toml")


def test_find_key_line_dotted_and_nested() -> None:
    text = "[a]\nb.c = 1\n[a.d]\ne = 2\n"
    assert find_key_line(text, ("a", "b", "c")) == 2
    assert find_key_line(text, ("a", "d", "e")) == 4
    assert find_key_line(text, ("a", "d", "missing")) == 3


def test_default_config_is_the_local_fleet() -> None:
    cfg = default_config()
    assert {m.backend for m in cfg.models.values()} == {"llamacpp"}
    assert cfg.store.url == "sqlite:///wattwise.db"
