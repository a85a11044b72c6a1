"""Typed, frozen, validated settings for every service.

Layers, lowest to highest priority: field defaults < `config/config.yaml` (or the file
named by `SLT_CONFIG`) < environment variables `SLT_<SECTION>__<FIELD>`.  Secrets come
only from the environment (`BINANCE_API_KEY`, `BINANCE_API_SECRET`, `SESSION_SECRET`)
and are `SecretStr`, so they never show in a repr or a log line.

A bad value raises `ConfigError` with one line naming the field; the CLI turns that
into exit status 2 without a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "config.yaml"

SERVICES = (
    "kline_feed",
    "account_feed",
    "rest_fallback",
    "trader",
    "position_controller",
    "reporter",
    "exchange_sim",
)

# Endpoints per mode; `sim` points at services/exchange_sim on loopback.
MODE_URLS: dict[str, dict[str, str]] = {
    "sim": {
        "rest_url": "http://127.0.0.1:8900",
        "ws_url": "ws://127.0.0.1:8900",
        "user_ws_url": "ws://127.0.0.1:8900",
    },
    "testnet": {
        "rest_url": "https://testnet.binancefuture.com",
        "ws_url": "wss://fstream.binancefuture.com",
        "user_ws_url": "wss://fstream.binancefuture.com",
    },
    "live": {
        "rest_url": "https://fapi.binance.com",
        "ws_url": "wss://fstream.binance.com",
        "user_ws_url": "wss://fstream.binance.com",
    },
}

DEFAULT_SYMBOLS = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT",
    "AVAXUSDT", "LINKUSDT", "DOTUSDT", "TRXUSDT", "LTCUSDT", "BCHUSDT", "ATOMUSDT",
    "NEARUSDT", "APTUSDT", "ARBUSDT", "OPUSDT", "FILUSDT", "ETCUSDT",
]  # fmt: skip


class ConfigError(Exception):
    """A setting is invalid; `str()` is the one line an operator needs."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"config error: {field}: {reason}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TradingConfig(_Section):
    cycle_interval: int = Field(60, gt=0, description="seconds between trading decisions (seed)")
    position_check_interval: int = Field(60, gt=0, description="position sweep period, seconds")
    max_positions: int = Field(5, ge=1, description="open positions at once (ranking slots)")
    max_total_exposure: float = Field(3.0, gt=0, description="sum of notionals / equity")
    risk_per_trade: float = Field(0.01, gt=0, le=0.2, description="equity fraction lost at stop")
    entry_order_type: Literal["MARKET", "LIMIT"] = "MARKET"
    max_holding_minutes: int = Field(240, ge=1, description="time stop")
    no_progress_minutes: int = Field(60, ge=1, description="entry invalidation by no progress")
    history_bars: int = Field(300, ge=50, description="closed klines kept per symbol")
    decision_grace: float = Field(
        2.0,
        ge=0,
        description="seconds of EVENT time after a minute's first closed kline "
        "before the trader decides that minute without the symbols still missing",
    )
    decision_timeout: float = Field(
        5.0, gt=0, description="wall-clock bound on that wait when no later event arrives"
    )


class WebsocketConfig(_Section):
    kline_interval: str = "1m"
    listen_key_renewal: int = Field(1800, gt=0, description="keepalive period, seconds (seed)")
    reconnect_delay: float = Field(5, ge=0, description="first reconnect delay, seconds (seed)")
    reconnect_max_delay: float = Field(60, gt=0)
    stall_timeout: float = Field(30, gt=0, description="no message this long = dead socket")
    streams_per_connection: int = Field(200, ge=1, le=1024)
    close_grace: float = Field(3, gt=0, description="seconds after due before REST fetches a kline")
    max_connection_age: float = Field(
        23 * 3600, gt=0, description="rotate before Binance's 24 h cut"
    )
    early_rest_close: float = Field(
        0.5,
        ge=0,
        description="seconds after a close to fetch it over REST when the socket's "
        "x:true is measured to arrive later than that (Binance: ~2 s); 0 = never",
    )


class RiskConfig(_Section):
    max_leverage: int = Field(125, ge=1, le=125)
    min_confidence: float = Field(0.5, ge=0, le=1)
    emergency_close_pnl: float = Field(-0.99, lt=0, ge=-10)
    min_notional: float = Field(10, gt=0)
    liquidation_buffer: float = Field(0.01, ge=0, lt=1, description="close when liq is this close")
    stop_atr_mult: float = Field(2.0, gt=0)
    take_profit_atr_mult: float = Field(3.0, gt=0)
    counter_trend_confidence: float = Field(0.7, ge=0, le=1)
    kelly_fraction: float = Field(0.5, gt=0, le=1)
    protection_grace: float = Field(10, ge=0, description="seconds a position may lack its stop")
    # position controller exit rules (services/position_controller/rules.py)
    emergency_close_enabled: bool = True
    liquidation_guard_enabled: bool = True
    entry_invalidation_enabled: bool = True
    counter_trend_enabled: bool = True
    time_stop_enabled: bool = True
    protection_check_enabled: bool = True
    no_progress_fraction: float = Field(
        0.25, ge=0, le=10, description="best excursion must reach this share of the stop distance"
    )
    counter_trend_min_strength: float = Field(
        0.2, ge=0, le=1, description="|trend regime| against the position needed to close"
    )
    maint_margin_rate: float = Field(
        0.004, ge=0, lt=1, description="for estimating an isolated position's liquidation price"
    )
    fallback_stop_fraction: float = Field(
        0.02, gt=0, lt=1, description="stop distance / entry when neither record nor ATR gives one"
    )
    fallback_take_profit_fraction: float = Field(0.03, gt=0, lt=1)
    close_retry_seconds: float = Field(15, gt=0, description="re-send an unanswered close after")
    reconcile_grace: float = Field(5, ge=0, description="skip repairing a position this fresh")
    entry_price_tolerance: float = Field(
        1e-6, ge=0, lt=1, description="relative entry price gap that counts as drift"
    )


class ExchangeConfig(_Section):
    mode: Literal["sim", "testnet", "live"] = "sim"
    rest_url: str = ""
    ws_url: str = ""
    user_ws_url: str = ""
    symbols: list[str] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS), min_length=1)
    recv_window: int = Field(5000, gt=0, le=60000)
    request_timeout: float = Field(10, gt=0)
    weight_limit_1m: int = Field(2400, gt=0, description="REQUEST_WEIGHT per minute per IP")
    weight_safety: float = Field(0.8, gt=0, le=1, description="slow down past this share")
    breaker_failures: int = Field(5, ge=1)
    breaker_open_seconds: float = Field(60, gt=0)
    taker_fee: float = Field(0.0005, ge=0)
    maker_fee: float = Field(0.0002, ge=0)

    @field_validator("symbols")
    @classmethod
    def _upper_symbols(cls, v: list[str]) -> list[str]:
        out = [s.strip().upper() for s in v]
        if any(not s.isalnum() for s in out):
            raise ValueError("symbols must be alphanumeric like BTCUSDT")
        if len(set(out)) != len(out):
            raise ValueError("symbols must be unique")
        return out

    @field_validator("rest_url", "ws_url", "user_ws_url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("must start with http(s):// or ws(s)://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _fill_urls(self) -> ExchangeConfig:
        for name, url in MODE_URLS[self.mode].items():
            if not getattr(self, name):
                object.__setattr__(self, name, url)
        return self


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field("slt:", min_length=1)
    stream_maxlen: dict[str, int] = Field(
        default_factory=lambda: {
            "klines": 500_000,
            "account": 100_000,
            "signals": 100_000,
            "orders": 100_000,
            "trades": 100_000,
            "risk": 50_000,
            "reports": 1_000,
            "alerts": 10_000,
        }
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class ModelConfig(_Section):
    dir: str = "var/models"
    retrain_after_trades: int = Field(50, ge=1)
    retrain_interval_hours: float = Field(24, gt=0)
    retrain_min_new_trades: int = Field(
        10, ge=1, description="new labelled trades the interval retrain needs (fewer: wait)"
    )
    min_train_samples: int = Field(200, ge=10)
    n_estimators: int = Field(200, ge=1)
    max_depth: int = Field(4, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1)
    win_rate_prior: float = Field(0.5, ge=0, le=1)
    win_rate_prior_weight: float = Field(20, ge=0)
    win_rate_window: int = Field(100, ge=1)
    label_horizon: int = Field(60, ge=1, description="time barrier in bars")
    cold_start: Literal["rest", "file", "off"] = Field(
        "rest",
        description="labelled history for the first model: REST klines, kline CSV "
        "files (cold_start_files) or none (signal scores until enough trades)",
    )
    cold_start_files: list[str] = Field(
        default_factory=list,
        description="Binance kline CSVs (.csv/.csv.gz): `SYMBOL=path` "
        "or a path whose file name starts with the symbol (BTCUSDT-1m-..., BTC_USDT_...)",
    )
    cold_start_bars: int = Field(4500, ge=100, le=50_000, description="klines per symbol (REST)")


class ServiceConfig(_Section):
    host: str = "127.0.0.1"
    ports: dict[str, int] = Field(
        default_factory=lambda: {
            "kline_feed": 9101,
            "account_feed": 9102,
            "rest_fallback": 9103,
            "trader": 9104,
            "position_controller": 9105,
            "reporter": 9106,
            "exchange_sim": 8900,
        }
    )
    heartbeat_interval: float = Field(2, gt=0)
    heartbeat_ttl: float = Field(15, gt=0)
    fallback_interval: float = Field(5, gt=0, description="rest_fallback check period, seconds")
    fallback_stale_after: float = Field(
        30, gt=0, description="kline stale this long past its next close -> REST (seed: 30 s)"
    )
    instance_index: int = Field(
        0, ge=-1, description="this replica's shard (kline_feed); -1 = claim a free one in Redis"
    )
    instance_count: int = Field(1, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    reports_dir: str = "var/reports"
    webhook_url: str = ""

    @model_validator(mode="after")
    def _shard_in_range(self) -> ServiceConfig:
        if self.instance_index >= self.instance_count:
            raise ValueError("instance_index must be < instance_count")
        return self


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by SLT_CONFIG (or config/config.yaml)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = Path(os.environ.get("SLT_CONFIG") or DEFAULT_CONFIG_PATH)
        if not path.exists():
            if os.environ.get("SLT_CONFIG"):
                raise ConfigError("SLT_CONFIG", f"file not found: {path}")
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(str(path), "top level must be a mapping of sections")
        return data


class Settings(BaseSettings):
    """All settings of one process. Frozen: pass it around, never mutate it."""

    model_config = SettingsConfigDict(
        env_prefix="SLT_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    trading: TradingConfig = TradingConfig()
    websocket: WebsocketConfig = WebsocketConfig()
    risk: RiskConfig = RiskConfig()
    exchange: ExchangeConfig = ExchangeConfig()
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    service: ServiceConfig = ServiceConfig()

    api_key: SecretStr | None = Field(None, validation_alias="BINANCE_API_KEY")
    api_secret: SecretStr | None = Field(None, validation_alias="BINANCE_API_SECRET")
    session_secret: SecretStr | None = Field(None, validation_alias="SESSION_SECRET")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @model_validator(mode="after")
    def _live_needs_keys(self) -> Settings:
        if self.exchange.mode in ("live", "testnet") and not (self.api_key and self.api_secret):
            raise ValueError(
                f"exchange.mode={self.exchange.mode} needs BINANCE_API_KEY and "
                "BINANCE_API_SECRET in the environment"
            )
        return self

    def credentials(self) -> tuple[str, str]:
        """(key, secret); in sim mode the simulator's built-in demo account."""
        if self.api_key and self.api_secret:
            return self.api_key.get_secret_value(), self.api_secret.get_secret_value()
        return SIM_DEMO_KEY, SIM_DEMO_SECRET

    def port(self, service: str) -> int:
        return self.service.ports[service]


# The simulator's demo account: not a secret, it only opens the loopback simulator.
SIM_DEMO_KEY = "slt-sim-demo-key"
SIM_DEMO_SECRET = "slt-sim-demo-secret"


def _format_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "settings"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    value = err.get("input")
    if loc in ("api_key", "api_secret", "session_secret") or isinstance(value, dict | list):
        return ConfigError(loc, msg)
    return ConfigError(loc, f"{msg} (got {value!r})")


def load_settings(**overrides: Any) -> Settings:
    """Build settings from YAML + env (+ explicit overrides, for tests)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _format_error(exc) from None
