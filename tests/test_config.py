"""Config: seed defaults, env overrides, secrets, and every validation error path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import MODE_URLS, ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SLT_") or name in (
            "BINANCE_API_KEY",
            "BINANCE_API_SECRET",
            "SESSION_SECRET",
        ):
            monkeypatch.delenv(name, raising=False)


def test_seed_defaults_from_yaml() -> None:
    s = load_settings()
    assert s.trading.cycle_interval == 60
    assert s.trading.position_check_interval == 60
    assert s.websocket.kline_interval == "1m"
    assert s.websocket.listen_key_renewal == 1800
    assert s.websocket.reconnect_delay == 5
    assert s.risk.max_leverage == 125
    assert s.risk.min_confidence == 0.5
    assert s.risk.emergency_close_pnl == -0.99
    assert s.risk.min_notional == 10
    assert s.exchange.mode == "sim"
    assert s.exchange.rest_url == "http://127.0.0.1:8900"
    assert len(s.exchange.symbols) == 20
    assert s.redis.prefix == "slt:"


def test_env_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLT_EXCHANGE__REST_URL", "http://127.0.0.1:1234/")
    monkeypatch.setenv("SLT_REDIS__URL", "redis://127.0.0.1:7777/3")
    monkeypatch.setenv("SLT_REDIS__PREFIX", "demo:")
    monkeypatch.setenv("SLT_RISK__MAX_LEVERAGE", "20")
    monkeypatch.setenv("SLT_EXCHANGE__SYMBOLS", '["btcusdt","ethusdt"]')
    s = load_settings()
    assert s.exchange.rest_url == "http://127.0.0.1:1234"
    assert s.redis.url == "redis://127.0.0.1:7777/3"
    assert s.redis.prefix == "demo:"
    assert s.risk.max_leverage == 20
    assert s.exchange.symbols == ["BTCUSDT", "ETHUSDT"]


def test_slt_config_names_another_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "c.yaml"
    other.write_text("risk:\n  max_leverage: 7\nexchange:\n  symbols: [BTCUSDT]\n")
    monkeypatch.setenv("SLT_CONFIG", str(other))
    s = load_settings()
    assert s.risk.max_leverage == 7
    assert s.exchange.symbols == ["BTCUSDT"]
    assert s.trading.cycle_interval == 60


def test_mode_default_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLT_EXCHANGE__MODE", "live")
    monkeypatch.setenv("BINANCE_API_KEY", "k" * 64)
    monkeypatch.setenv("BINANCE_API_SECRET", "s" * 64)
    s = load_settings()
    assert s.exchange.rest_url == MODE_URLS["live"]["rest_url"]
    assert s.exchange.ws_url == MODE_URLS["live"]["ws_url"]
    assert s.exchange.rest_url != MODE_URLS["sim"]["rest_url"]


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SLT_RISK__MAX_LEVERAGE": "0"}, "risk.max_leverage"),
        ({"SLT_RISK__MAX_LEVERAGE": "200"}, "risk.max_leverage"),
        ({"SLT_RISK__MIN_CONFIDENCE": "1.5"}, "risk.min_confidence"),
        ({"SLT_RISK__EMERGENCY_CLOSE_PNL": "0.5"}, "risk.emergency_close_pnl"),
        ({"SLT_RISK__MIN_NOTIONAL": "-1"}, "risk.min_notional"),
        ({"SLT_TRADING__CYCLE_INTERVAL": "abc"}, "trading.cycle_interval"),
        ({"SLT_WEBSOCKET__LISTEN_KEY_RENEWAL": "0"}, "websocket.listen_key_renewal"),
        ({"SLT_EXCHANGE__MODE": "paper"}, "exchange.mode"),
        ({"SLT_EXCHANGE__REST_URL": "ftp://x"}, "exchange.rest_url"),
        ({"SLT_EXCHANGE__SYMBOLS": '["BTC-USDT"]'}, "exchange.symbols"),
        ({"SLT_EXCHANGE__SYMBOLS": "[]"}, "exchange.symbols"),
        ({"SLT_REDIS__URL": "http://x"}, "redis.url"),
        ({"SLT_SERVICE__INSTANCE_INDEX": "3", "SLT_SERVICE__INSTANCE_COUNT": "2"}, "service"),
    ],
)
def test_bad_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    line = str(info.value)
    assert line.startswith(f"config error: {field}")
    assert "\n" not in line


def test_unknown_field_in_yaml_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("risk:\n  max_leverge: 5\n")
    monkeypatch.setenv("SLT_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=r"risk\.max_leverge"):
        load_settings()


def test_missing_config_file_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLT_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="SLT_CONFIG"):
        load_settings()


def test_live_without_keys_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLT_EXCHANGE__MODE", "live")
    with pytest.raises(ConfigError, match="BINANCE_API_KEY"):
        load_settings()


def test_secrets_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINANCE_API_KEY", "AKEYTHATMUSTNOTLEAK123")
    monkeypatch.setenv("BINANCE_API_SECRET", "ASECRETTHATMUSTNOTLEAK456")
    monkeypatch.setenv("SESSION_SECRET", "SESSIONSECRET789")
    s = load_settings()
    text = repr(s) + str(s) + s.model_dump_json()
    for secret in ("AKEYTHATMUSTNOTLEAK123", "ASECRETTHATMUSTNOTLEAK456", "SESSIONSECRET789"):
        assert secret not in text
    assert s.credentials() == ("AKEYTHATMUSTNOTLEAK123", "ASECRETTHATMUSTNOTLEAK456")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen
        s.risk.max_leverage = 3  # type: ignore[misc]


def test_cli_bad_config_is_one_line_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLT_")}
    env["SLT_RISK__MAX_LEVERAGE"] = "500"
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: risk.max_leverage")
    assert "Traceback" not in proc.stderr
