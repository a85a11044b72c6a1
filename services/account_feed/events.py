"""User-data messages -> cache writes and bus entries, for one batch (pure).

WHY a batch: messages that arrive together (an order's NEW, TRADE and ACCOUNT_UPDATE
come in one burst) are applied and published with one Redis call.  Parsing, validation,
conversion to our domain types and the bus encoding happen here, without I/O, so the
service's writer is a loop around `process_batch` + `AccountCache.apply`.

Bus entries (`slt:stream:account`): `type` is Binance's event type (ORDER_TRADE_UPDATE,
ACCOUNT_UPDATE, ALGO_UPDATE, ACCOUNT_CONFIG_UPDATE), `symbol` the event's symbol (for an
ACCOUNT_UPDATE: its one position's symbol, "" for none or several), `event_time` = `E`,
`data` = the domain record's `to_dict()` (`OrderUpdate`, `AccountUpdate`, `AlgoUpdate`,
`ConfigUpdate`: read it back with `<Type>.from_dict`).

`listenKeyExpired` is not published: it is the lifecycle's business (`expired_keys`).
Anything that does not parse is counted (`bad`, or `ignored` for documented event types
we do not model, such as TRADE_LITE) and dropped; a few reasons are kept for the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.account_feed.state import Write, account_update_writes, config_update_writes
from shared.binance.schemas import (
    AccountConfigUpdateEvent,
    AccountUpdateEvent,
    AlgoUpdateEvent,
    ListenKeyExpiredEvent,
    OrderTradeUpdateEvent,
    parse_user_event,
)
from shared.codec import encode_event
from shared.errors import MessageError, excerpt
from shared.models import AccountUpdate, AlgoUpdate, ConfigUpdate, OrderUpdate

__all__ = ["MAX_REASONS", "BatchResult", "process_batch"]

MAX_REASONS = 5  # bad-message reasons kept per batch for the log


@dataclass
class BatchResult:
    writes: list[Write] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    expired_keys: list[str] = field(default_factory=list)  # "" = the current key
    bad: int = 0
    ignored: int = 0
    reasons: list[str] = field(default_factory=list)
    last_event_time: int | None = None
    types: dict[str, int] = field(default_factory=dict)


def _convert(event: Any) -> tuple[str, Any, list[Write], str | None]:
    """(type, domain record, writes, symbol) of one parsed event."""
    if isinstance(event, AccountUpdateEvent):
        u = AccountUpdate.from_event(event)
        symbols = {p.symbol for p in u.positions}
        symbol = next(iter(symbols)) if len(symbols) == 1 else None
        return "ACCOUNT_UPDATE", u, account_update_writes(u), symbol
    if isinstance(event, OrderTradeUpdateEvent):
        o = OrderUpdate.from_event(event)
        return "ORDER_TRADE_UPDATE", o, [], o.symbol
    if isinstance(event, AlgoUpdateEvent):
        a = AlgoUpdate.from_event(event)
        return "ALGO_UPDATE", a, [], a.symbol
    if isinstance(event, AccountConfigUpdateEvent):
        c = ConfigUpdate.from_event(event)
        return "ACCOUNT_CONFIG_UPDATE", c, config_update_writes(c), c.symbol
    raise MessageError(f"unhandled event {type(event).__name__}")


def _add(out: BatchResult, raw: bytes | str) -> None:
    try:
        event = parse_user_event(raw)
        if isinstance(event, ListenKeyExpiredEvent):
            out.expired_keys.append(event.listenKey)
            return
        kind, record, writes, symbol = _convert(event)
        entry = encode_event(kind, record.to_dict(), symbol=symbol, event_time=event.E)
    except MessageError as exc:
        if exc.ignorable:
            out.ignored += 1
        else:
            out.bad += 1
            if len(out.reasons) < MAX_REASONS:
                out.reasons.append(exc.reason)
        return
    except (TypeError, ValueError, ArithmeticError) as exc:  # a record refused its data
        out.bad += 1
        if len(out.reasons) < MAX_REASONS:
            out.reasons.append(f"{type(exc).__name__}: {exc} | {excerpt(raw, 80)!r}")
        return
    out.writes.extend(writes)
    out.entries.append(entry)
    out.types[kind] = out.types.get(kind, 0) + 1
    if out.last_event_time is None or event.E > out.last_event_time:
        out.last_event_time = event.E


def process_batch(raws: Iterable[bytes | str]) -> BatchResult:
    """Parse, check and convert a batch of raw user-stream messages, in order."""
    out = BatchResult()
    for raw in raws:
        _add(out, raw)
    return out
