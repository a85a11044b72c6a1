"""What one chaos run looks like: market size, speed, timings, planted secrets, settings.

WHY one frozen object: the suite test and `bench/soak.py` run the same harness with
different sizes; everything a run depends on (and every figure's threshold, such as the
stop-loss grace) lives here, so a printed figure can always be traced to its setting.

Time units: the simulator runs `speed` simulated seconds per real second.  Settings the
services read as "seconds" are measured on the services' own (real) clocks, so they are
given in real seconds; the chaos run's figures (grace, latencies) are real seconds too.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from shared.config import DEFAULT_SYMBOLS

SERVICES: tuple[str, ...] = (
    "kline_feed",
    "account_feed",
    "rest_fallback",
    "trader",
    "position_controller",
    "reporter",
)
REDIS_PREFIX = "slt:"


def symbol_names(count: int) -> list[str]:
    """`count` symbols: the default list first, then `X001USDT`... as the simulator names
    them for `--symbols <count>` (so both sides agree without passing a list around)."""
    extra = [f"X{i:03d}USDT" for i in range(1, max(0, count - len(DEFAULT_SYMBOLS)) + 1)]
    return (list(DEFAULT_SYMBOLS) + extra)[:count]


@dataclass(frozen=True)
class Secrets:
    """Known secret values planted in the environment, then searched for everywhere."""

    api_key: str
    api_secret: str
    session_secret: str

    @classmethod
    def fresh(cls) -> Secrets:
        return cls(
            "e2eKEY" + secrets.token_hex(24),
            "e2eSECRET" + secrets.token_hex(24),
            "e2eSESSION" + secrets.token_hex(24),
        )

    def named(self) -> dict[str, str]:
        return {
            "BINANCE_API_KEY": self.api_key,
            "BINANCE_API_SECRET": self.api_secret,
            "SESSION_SECRET": self.session_secret,
        }


@dataclass(frozen=True)
class ChaosConfig:
    """One run.  `fault_seconds` is how long the fault schedule lasts (real time)."""

    work_dir: Path
    symbols: int = 50
    speed: float = 240.0
    seed: int = 11
    start_ms: int = field(default_factory=lambda: default_start_ms(240.0, 30.0))
    balance: str = "100000"
    fault_seconds: float = 100.0
    warmup_seconds: float = 8.0  # normal trading before the first fault
    settle_timeout: float = 40.0  # after the faults: caught up, quiet, healthy
    protection_grace_s: float = 8.0  # a position may lack its exchange stop this long
    max_leverage: int = 10  # the cap every position is checked against
    sample_every_s: float = 0.2  # exchange state sampling period
    kill_gap_s: float = 3.0  # between two kill -9 of the schedule
    secrets: Secrets = field(default_factory=Secrets.fresh)
    extra_settings: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> ChaosConfig:
        return replace(self, **changes)

    @property
    def symbol_list(self) -> list[str]:
        return symbol_names(self.symbols)

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.work_dir / "reports"

    @property
    def models_dir(self) -> Path:
        return self.work_dir / "models"

    @property
    def redis_dir(self) -> Path:
        return self.work_dir / "redis"


def default_start_ms(speed: float, minutes: float, now_s: float | None = None) -> int:
    """Simulator start: 22:00 UTC (the run crosses 00:00, so a daily report is written),
    on a day far enough in the past that simulated time never reaches the wall clock
    during `minutes` of real time at `speed`.  WHY: a process that has not synced its
    server-time offset yet signs with the wall clock; it must never be BEHIND the
    simulator (see faults.py on the shared 429/418 ban)."""
    now = time.time() if now_s is None else now_s
    sim_span_s = minutes * 60 * speed * 1.2 + 2 * 86_400
    day = int((now - sim_span_s) // 86_400) * 86_400
    return (day + 22 * 3600) * 1000


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def system_settings(cfg: ChaosConfig) -> dict[str, Any]:
    """The services' configuration (written as their YAML file).

    Chosen so the system trades on the synthetic market within a short run (low
    confidence floor, short holding times in simulated minutes) and so every recovery
    path fits in seconds of real time (short reconnect delays, a 2 s breaker, stall
    detection in 2 s, listenKey keepalive every few real seconds since the simulator's
    60-minute validity passes in 3600 / speed real seconds)."""
    key_life_real = 3600.0 / cfg.speed
    sim_s = cfg.speed  # simulated seconds per real second: for settings in EXCHANGE time
    base: dict[str, Any] = {
        "trading": {
            "position_check_interval": 3,
            "max_positions": 5,
            "max_total_exposure": 3.0,
            "risk_per_trade": 0.01,
            "max_holding_minutes": 45,
            "no_progress_minutes": 20,
            "history_bars": 120,
            "decision_grace": min(30.0, 0.1 * sim_s),
            "decision_timeout": 2,
        },
        "websocket": {
            "listen_key_renewal": max(1, int(key_life_real / 6)),
            "reconnect_delay": 0.2,
            "reconnect_max_delay": 2,
            "stall_timeout": 2,
            "close_grace": 2 * sim_s,  # exchange time: 2 real seconds
            "early_rest_close": 0,
        },
        "risk": {
            "max_leverage": cfg.max_leverage,
            "min_confidence": 0.05,
            "counter_trend_confidence": 0.05,
            "protection_grace": 1 * sim_s,  # exchange time: 1 real second
            "reconcile_grace": 1 * sim_s,
            "close_retry_seconds": 3 * sim_s,
        },
        "exchange": {
            "mode": "sim",
            "symbols": cfg.symbol_list,
            "recv_window": 60000,
            "request_timeout": 3,
            "breaker_failures": 5,
            "breaker_open_seconds": 2,
        },
        "redis": {"prefix": REDIS_PREFIX},
        "model": {
            "dir": str(cfg.models_dir),
            "cold_start": "off",  # the signal's own score until enough real trades
            "retrain_after_trades": 20,
            "min_train_samples": 200,
            "n_estimators": 40,
            "max_depth": 3,
        },
        "service": {
            "heartbeat_interval": 0.5,
            "heartbeat_ttl": 3,
            "fallback_interval": 1,
            "fallback_stale_after": 5 * sim_s,  # exchange time: 5 real seconds
            "log_level": "INFO",
            "reports_dir": str(cfg.reports_dir),
        },
    }
    return _merge(base, cfg.extra_settings)


def write_settings(cfg: ChaosConfig) -> Path:
    path = cfg.work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(system_settings(cfg), sort_keys=False))
    return path
