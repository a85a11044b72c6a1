"""JSON log lines and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import load_settings
from shared.logs import Redactor, secrets_of, setup_logging

API_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
API_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
SESSION = "session-secret-1234"


@pytest.fixture
def log_out() -> Iterator[io.StringIO]:
    """Route logging to a buffer through setup_logging; restore the root logger after."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buf = io.StringIO()
    handler = setup_logging("trader", "DEBUG", secrets=[API_KEY, API_SECRET, SESSION, None],
                            stream=buf)  # fmt: skip
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_one_json_object_per_line_with_extras(log_out: io.StringIO) -> None:
    log = logging.getLogger("services.trader")
    log.info("decided %s", "BTCUSDT", extra={"symbol": "BTCUSDT", "confidence": 0.7})
    log.warning("multi\nline")
    [first, second] = _lines(log_out)
    assert first["level"] == "INFO" and first["service"] == "trader"
    assert first["logger"] == "services.trader" and first["msg"] == "decided BTCUSDT"
    assert first["symbol"] == "BTCUSDT" and first["confidence"] == 0.7
    assert str(first["ts"]).endswith("Z") and "T" in str(first["ts"])
    assert second["msg"] == "multi\nline" and second["level"] == "WARNING"


def test_secrets_logged_by_accident_are_redacted(log_out: io.StringIO) -> None:
    log = logging.getLogger("shared.binance.client")
    url = f"http://127.0.0.1:8900/fapi/v1/order?symbol=BTCUSDT&timestamp=1&signature={'ab12' * 16}"
    log.info("sending %s", url)
    log.info("headers %s", {"X-MBX-APIKEY": "not-configured-but-a-header-value"})
    log.debug("raw header X-MBX-APIKEY: anotherheadervalue9")
    log.info("settings", extra={"key": API_KEY, "nested": {"secret": [API_SECRET]}})
    log.info(f"session is {SESSION}")
    try:
        raise RuntimeError(f"auth failed for secret={API_SECRET}")
    except RuntimeError:
        log.exception("request failed")
    out = log_out.getvalue()
    for leaked in (API_KEY, API_SECRET, SESSION, "ab12ab12", "not-configured-but-a-header-value",
                   "anotherheadervalue9"):  # fmt: skip
        assert leaked not in out
    lines = _lines(log_out)
    assert len(lines) == 6
    assert lines[0]["msg"].endswith("&signature=***")  # type: ignore[union-attr]
    assert "X-MBX-APIKEY': '***'" in str(lines[1]["msg"])
    assert lines[3]["key"] == "***" and lines[3]["nested"] == {"secret": ["***"]}
    assert "RuntimeError: auth failed for secret=***" in str(lines[5]["exc"])


def test_setup_is_idempotent(log_out: io.StringIO) -> None:
    root = logging.getLogger()
    again = io.StringIO()
    handler = setup_logging("trader", "INFO", stream=again)
    try:
        ours = [h for h in root.handlers if getattr(h, "_slt_handler", False)]
        assert ours == [handler]
        logging.getLogger("x").info("once")
        assert len(again.getvalue().splitlines()) == 1 and log_out.getvalue() == ""
    finally:
        root.removeHandler(handler)


def test_secrets_of_settings() -> None:
    settings = load_settings(BINANCE_API_KEY=API_KEY, BINANCE_API_SECRET=API_SECRET)
    assert sorted(secrets_of(settings)) == sorted([API_KEY, API_SECRET])
    assert API_KEY not in repr(settings)


@given(
    secret=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=4, max_size=40),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_redactor_never_leaves_a_secret(secret: str, before: str, after: str) -> None:
    text = f"{before}{secret}{after}{secret}"
    assert secret not in Redactor([secret])(text)


def test_bad_format_args_still_log_one_redacted_line(log_out: io.StringIO) -> None:
    logging.getLogger("x").info("two %s %s", API_KEY)  # one arg short
    [line] = _lines(log_out)
    assert "unformattable" in str(line["msg"]) and API_KEY not in log_out.getvalue()
