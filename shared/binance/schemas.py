"""Binance USD-M futures wire structs, with Binance's own field names, and their parsers.

These mirror the exchange's JSON one to one (`e`, `E`, `k.t`, `o.ap` ...); our names live
in `shared.models`, which converts each struct once (`Kline.from_event`, ...).  Decoding is
msgspec (a C decoder that checks types while it parses: a full typed parse costs about
what `orjson.loads` does and 2-3x less than `json.loads`, see bench/bench_parse.py), then
one chained comparison that the numbers make sense.

Numbers: kline OHLCV decode straight to `float` (features use floats; the exchange's
decimal string is recovered exactly by `Decimal(repr(x))`, since Binance prices have far
fewer than 15 significant digits).  User-data amounts and prices decode to `Decimal`,
because they reach orders, PnL and reconciliation.

Every failure — garbage bytes, a missing field, a wrong type, NaN/inf, a zero or negative
price, high < low, an unknown event type, a wrong symbol — raises `MessageError`.

Hot path (kline_feed): ~90% of kline messages are updates of the still-open candle, and
all the feed needs from them is the last price.  `is_closed_kline_fast(raw)` is a
substring test for `"x":true`; only when it says True is the message fully parsed with
`parse_kline_message`.  A False answer is only ever "treat as an open candle", never a
decision to publish.  `last_price(raw)` reads the `"c"` field of an open candle by
substring search; `price_tick(raw)` gives symbol, event time, close and `x` (a full parse).
See bench/bench_parse.py for the figures.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from shared.errors import SYMBOL_RE, MessageError, excerpt

INTERVALS = frozenset("1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M".split())
_INF = float("inf")
_ZERO = Decimal(0)


class _Wire(msgspec.Struct, frozen=True, gc=False):
    """Base for wire structs: immutable, no GC tracking (they hold no cycles)."""


# ---- market data -------------------------------------------------------------------------


class KlineData(_Wire):
    """The `k` object of a kline event (see `KlineEvent`)."""

    t: int  # kline start time
    T: int  # kline close time
    s: str  # symbol
    i: str  # interval
    f: int  # first trade id
    L: int  # last trade id
    o: float  # open
    c: float  # close
    h: float  # high
    l: float  # noqa: E741  low
    v: float  # base asset volume
    n: int  # number of trades
    x: bool  # is this kline closed?
    q: float  # quote asset volume
    V: float  # taker buy base asset volume
    Q: float  # taker buy quote asset volume
    B: str = "0"  # ignore


class KlineEvent(_Wire):
    """`<symbol>@kline_<interval>` stream event.

    Documented example (developers.binance.com/docs/derivatives/usds-margined-futures/
    websocket-market-streams/Kline-Candlestick-Streams), verbatim::

        {
          "e": "kline",
          "E": 123456789,
          "s": "BNBUSDT",
          "k": {
            "t": 123400000,
            "T": 123460000,
            "s": "BNBUSDT",
            "i": "1m",
            "f": 100,
            "L": 200,
            "o": "0.0010",
            "c": "0.0020",
            "h": "0.0025",
            "l": "0.0015",
            "v": "1000",
            "n": 100,
            "x": false,
            "q": "1.0000",
            "V": "500",
            "Q": "0.500",
            "B": "123456"
          }
        }

    Note that this sample is not a consistent candle (low 0.0015 > open 0.0010), so
    `parse_kline_message` rejects it verbatim; it decodes, and its corrected twin parses.
    Combined streams wrap it as `{"stream": "bnbusdt@kline_1m", "data": {...}}`.
    """

    e: str
    E: int
    s: str
    k: KlineData


class _KlineWrapped(_Wire):
    stream: str
    data: KlineEvent


class PriceTick(_Wire):
    """The least a feed needs from an open-candle update (a C struct: cheap to build)."""

    symbol: str
    price: float
    event_time: int
    closed: bool


# ---- user data -----------------------------------------------------------------------------


class BalanceEntry(_Wire):
    a: str  # asset
    wb: Decimal  # wallet balance
    cw: Decimal  # cross wallet balance
    bc: Decimal = _ZERO  # balance change except PnL and commission


class PositionEntry(_Wire):
    s: str  # symbol
    pa: Decimal  # position amount (signed)
    ep: Decimal  # entry price
    up: Decimal  # unrealized PnL
    mt: str  # margin type: isolated | cross
    iw: Decimal  # isolated wallet (if isolated)
    ps: str  # position side: BOTH | LONG | SHORT
    bep: Decimal = _ZERO  # break-even price
    cr: Decimal = _ZERO  # (pre-fee) accumulated realized
    ma: str = ""  # margin asset (sent by some API versions)


class AccountUpdateData(_Wire):
    m: str  # event reason type: ORDER, FUNDING_FEE, DEPOSIT, ...
    B: list[BalanceEntry]
    P: list[PositionEntry] = []


class AccountUpdateEvent(_Wire):
    """`ACCOUNT_UPDATE`: balances and changed positions.

    Documented example (.../user-data-streams/Event-Balance-and-Position-Update),
    verbatim (the doc's comments removed)::

        {
          "e": "ACCOUNT_UPDATE",
          "E": 1564745798939,
          "T": 1564745798938 ,
          "a":
            {
              "m":"ORDER",
              "B":[
                {"a":"USDT", "wb":"122624.12345678", "cw":"100.12345678", "bc":"50.12345678"},
                {"a":"BUSD", "wb":"1.00000000", "cw":"0.00000000", "bc":"-49.12345678"}
              ],
              "P":[
               {"s":"BTCUSDT", "pa":"0", "ep":"0.00000", "bep":"0", "cr":"200", "up":"0",
                "mt":"isolated", "iw":"0.00000000", "ps":"BOTH"},
               {"s":"BTCUSDT", "pa":"20", "ep":"6563.66500", "bep":"6563.6", "cr":"0",
                "up":"2850.21200", "mt":"isolated", "iw":"13200.70726908", "ps":"LONG"},
               {"s":"BTCUSDT", "pa":"-10", "ep":"6563.86000", "bep":"6563.6",
                "cr":"-45.04000000", "up":"-1423.15600", "mt":"isolated",
                "iw":"6570.42511771", "ps":"SHORT"}
              ]
            }
        }
    """

    e: str
    E: int
    T: int
    a: AccountUpdateData


class OrderData(_Wire):
    s: str  # symbol
    c: str  # client order id
    S: str  # side
    o: str  # order type
    f: str  # time in force
    q: Decimal  # original quantity
    p: Decimal  # original price
    ap: Decimal  # average price
    x: str  # execution type
    X: str  # order status
    i: int  # order id
    l: Decimal  # noqa: E741  last filled quantity
    z: Decimal  # filled accumulated quantity
    L: Decimal  # last filled price
    T: int  # order trade time
    t: int  # trade id
    R: bool  # reduce only
    ot: str  # original order type
    ps: str  # position side
    sp: Decimal = _ZERO  # stop price
    N: str = ""  # commission asset (absent when no commission)
    n: Decimal = _ZERO  # commission
    b: Decimal = _ZERO  # bids notional
    a: Decimal = _ZERO  # ask notional
    m: bool = False  # is this trade the maker side?
    wt: str = ""  # stop price working type
    cp: bool = False  # close-all (conditional orders only)
    AP: Decimal | None = None  # activation price (trailing stop only)
    cr: Decimal | None = None  # callback rate (trailing stop only)
    pP: bool = False  # price protection
    si: int = 0  # ignore
    ss: int = 0  # ignore
    rp: Decimal = _ZERO  # realized profit of the trade
    V: str = ""  # self-trade prevention mode
    pm: str = ""  # price match mode
    gtd: int = 0  # auto-cancel time of a GTD order
    er: str = "0"  # expiry reason


class OrderTradeUpdateEvent(_Wire):
    """`ORDER_TRADE_UPDATE`: an order was created, filled, cancelled, expired, amended.

    Documented example (.../user-data-streams/Event-Order-Update), verbatim::

        {"e":"ORDER_TRADE_UPDATE","E":1568879465651,"T":1568879465650,
         "o":{"s":"BTCUSDT","c":"TEST","S":"SELL","o":"TRAILING_STOP_MARKET","f":"GTC",
              "q":"0.001","p":"0","ap":"0","sp":"7103.04","x":"NEW","X":"NEW","i":8886774,
              "l":"0","z":"0","L":"0","N":"USDT","n":"0","T":1568879465650,"t":0,"b":"0",
              "a":"9.91","m":false,"R":false,"wt":"CONTRACT_PRICE",
              "ot":"TRAILING_STOP_MARKET","ps":"LONG","cp":false,"AP":"7476.89","cr":"5.0",
              "pP":false,"si":0,"ss":0,"rp":"0","V":"EXPIRE_TAKER","pm":"OPPONENT",
              "gtd":0,"er":"0"}}
    """

    e: str
    E: int
    T: int
    o: OrderData


class AlgoData(_Wire):
    caid: str  # client algo id
    aid: int  # algo id
    at: str  # algo type (CONDITIONAL)
    o: str  # order type
    s: str  # symbol
    S: str  # side
    q: Decimal  # quantity
    X: str  # algo status
    ps: str = "BOTH"  # position side
    f: str = ""  # time in force
    ai: str = ""  # order id in the matching engine once triggered
    ap: Decimal = _ZERO  # average fill price once triggered
    aq: Decimal = _ZERO  # filled quantity once triggered
    act: str = ""  # actual order type once triggered
    tp: Decimal = _ZERO  # trigger price
    p: Decimal = _ZERO  # order price
    V: str = ""  # self-trade prevention mode
    wt: str = ""  # working type
    pm: str = ""  # price match mode
    cp: bool = False  # close position
    pP: bool = False  # price protection
    R: bool = False  # reduce only
    tt: int = 0  # trigger time
    gtd: int = 0  # GTD auto-cancel time
    rm: str = ""  # failure reason


class AlgoUpdateEvent(_Wire):
    """`ALGO_UPDATE`: a conditional (algo) order changed state.

    Documented example (.../user-data-streams/Event-Algo-Order-Update), verbatim except
    for the outer closing brace, which the page is missing::

        {"e":"ALGO_UPDATE","T":1750515742297,"E":1750515742303,
         "o":{"caid":"Q5xaq5EGKgXXa0fD7fs0Ip","aid":2148719,"at":"CONDITIONAL",
              "o":"TAKE_PROFIT","s":"BNBUSDT","S":"SELL","ps":"BOTH","f":"GTC","q":"0.01",
              "X":"CANCELED","ai":"","ap": "0.00000","aq": "0.00000","act": "0",
              "tp":"750","p":"750","V":"EXPIRE_MAKER","wt":"CONTRACT_PRICE","pm":"NONE",
              "cp":false,"pP":false,"R":false,"tt":0,"gtd":0,"rm": "Reduce Only reject"}}
    """

    e: str
    E: int
    T: int
    o: AlgoData


class LeverageConfig(_Wire):
    s: str
    l: int  # noqa: E741  leverage


class AssetModeConfig(_Wire):
    j: bool  # multi-assets mode


class AccountConfigUpdateEvent(_Wire):
    """`ACCOUNT_CONFIG_UPDATE`: leverage of a symbol (`ac`) or multi-assets mode (`ai`).

    Documented examples (.../Event-Account-Configuration-Update-previous-Leverage-Update)::

        {"e":"ACCOUNT_CONFIG_UPDATE","E":1611646737479,"T":1611646737476,
         "ac":{"s":"BTCUSDT","l":25}}
        {"e":"ACCOUNT_CONFIG_UPDATE","E":1611646737479,"T":1611646737476,
         "ai":{"j":true}}
    """

    e: str
    E: int
    T: int
    ac: LeverageConfig | None = None
    ai: AssetModeConfig | None = None


class ListenKeyExpiredEvent(_Wire):
    """`listenKeyExpired`: the stream's key expired; get a new one and reconcile.

    Documented example (.../Event-User-Data-Stream-Expired) — note `E` is a string::

        {"e": "listenKeyExpired", "E": "1736996475556",
         "listenKey":"WsCMN0a4KHUPTQuX6IUnqEZfB1inxmv1qR4kbf1LuEjur5VdbzqvyxqG9TSjVVxv"}

    The key grants read access to the account stream, so it is masked in the repr.
    """

    e: str
    E: int
    listenKey: str = ""

    def __repr__(self) -> str:
        return f"ListenKeyExpiredEvent(e={self.e!r}, E={self.E}, listenKey='***')"


UserEvent = (
    AccountUpdateEvent
    | OrderTradeUpdateEvent
    | AlgoUpdateEvent
    | AccountConfigUpdateEvent
    | ListenKeyExpiredEvent
)

# Documented user-data events we do not model; they raise MessageError(ignorable=True).
IGNORED_USER_EVENTS = frozenset(
    {"TRADE_LITE", "MARGIN_CALL", "CONDITIONAL_ORDER_TRIGGER_REJECT", "GRID_UPDATE",
     "STRATEGY_UPDATE"}
)  # fmt: skip

_USER_TYPES: dict[str, type[Any]] = {
    "ACCOUNT_UPDATE": AccountUpdateEvent,
    "ORDER_TRADE_UPDATE": OrderTradeUpdateEvent,
    "ALGO_UPDATE": AlgoUpdateEvent,
    "ACCOUNT_CONFIG_UPDATE": AccountConfigUpdateEvent,
    "listenKeyExpired": ListenKeyExpiredEvent,
}


# ---- decoders ------------------------------------------------------------------------------
# strict=False lets msgspec turn decimal strings into floats/ints in C ("0.0010" -> 0.001,
# "1736996475556" -> int), which is how Binance sends most numbers.

_KLINE = msgspec.json.Decoder(KlineEvent, strict=False)
_KLINE_WRAPPED = msgspec.json.Decoder(_KlineWrapped, strict=False)


class _Head(msgspec.Struct, gc=False):
    e: str | None = None
    data: msgspec.Raw = msgspec.Raw()


_HEAD = msgspec.json.Decoder(_Head, strict=False)
_USER_DECODERS = {e: msgspec.json.Decoder(t, strict=False) for e, t in _USER_TYPES.items()}
_KNOWN_SYMBOLS: set[str] = set()
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, TypeError)


def _symbol_ok(symbol: str) -> bool:
    """Symbol format check, memoised (a feed sees the same few hundred symbols)."""
    if symbol in _KNOWN_SYMBOLS:
        return True
    if SYMBOL_RE.fullmatch(symbol) is None:
        return False
    if len(_KNOWN_SYMBOLS) < 20_000:
        _KNOWN_SYMBOLS.add(symbol)
    return True


def _is_wrapped(raw: bytes | str) -> bool:
    """Combined-stream wrapper?  Binance's compact key order answers from the first bytes;
    anything else (spaces, other key order) falls back to a search for the `data` key."""
    if isinstance(raw, str):
        raw = raw[:16].encode() if raw.startswith(('{"stream"', '{"e"')) else raw.encode()
    if raw.startswith(b'{"stream"'):
        return True
    return False if raw.startswith(b'{"e"') else b'"data"' in raw


# ---- klines --------------------------------------------------------------------------------


def parse_kline_message(raw: bytes | str | dict[str, Any]) -> KlineEvent:
    """Decode and check one kline message: a raw stream event or the combined-stream
    wrapper `{"stream": ..., "data": {...}}`.  Raises MessageError, nothing else."""
    try:
        if isinstance(raw, dict):
            body = raw["data"] if "data" in raw else raw
            event = msgspec.convert(body, KlineEvent, strict=False)
        elif isinstance(raw, bytes | str):
            event = _KLINE_WRAPPED.decode(raw).data if _is_wrapped(raw) else _KLINE.decode(raw)
        elif isinstance(raw, bytearray | memoryview):
            return parse_kline_message(bytes(raw))
        else:
            raise MessageError(f"unsupported message type {type(raw).__name__}", excerpt(raw))
    except _DECODE_ERRORS as exc:
        raise MessageError(f"bad kline message: {exc}", excerpt(raw)) from None
    except KeyError as exc:
        raise MessageError(f"missing field {exc}", excerpt(raw)) from None
    k = event.k
    # One chained comparison covers: NaN anywhere, zero/negative/inf prices, high < low,
    # open/close outside [low, high], negative or non-finite volumes.
    if (
        event.e == "kline"
        and 0.0 < k.l <= k.o <= k.h < _INF
        and k.l <= k.c <= k.h
        and 0.0 <= k.v < _INF
        and 0.0 <= k.q < _INF
        and 0.0 <= k.V < _INF
        and 0.0 <= k.Q < _INF
        and 0 <= k.t < k.T
        and k.n >= 0
        and k.s == event.s
        and k.i in INTERVALS
        and _symbol_ok(event.s)
    ):
        return event
    raise MessageError(_kline_fault(event), excerpt(raw))


def _kline_fault(event: KlineEvent) -> str:
    """Name the first broken rule (slow path, only for rejected messages)."""
    k = event.k
    checks: list[tuple[bool, str]] = [
        (event.e == "kline", f"unknown event type {event.e!r}"),
        (all(0.0 < p < _INF for p in (k.o, k.h, k.l, k.c)), "price not finite and > 0"),
        (k.l <= k.h, "high < low"),
        (k.l <= min(k.o, k.c), "low above open/close"),
        (max(k.o, k.c) <= k.h, "high below open/close"),
        (all(0.0 <= v < _INF for v in (k.v, k.q, k.V, k.Q)), "volume not finite and >= 0"),
        (0 <= k.t < k.T, "close time not after open time"),
        (k.n >= 0, "negative trade count"),
        (_symbol_ok(event.s), f"wrong symbol format {event.s!r}"),
        (k.s == event.s, "k.s differs from s"),
        (k.i in INTERVALS, f"unknown interval {k.i!r}"),
    ]
    return next((reason for ok, reason in checks if not ok), "invalid kline")


def is_closed_kline_fast(raw: bytes | str) -> bool:
    """Prefilter: could this kline message be a closed candle (`"x":true`)?

    One reverse substring search (`x` sits near the end of the message, ~0.2 us),
    tolerant of one space after the colon.  True means "parse it properly with
    parse_kline_message"; it never publishes anything by itself.  False means the candle
    is still open (or the message is not a closed kline at all)."""
    if isinstance(raw, str):
        i = raw.rfind('"x":')
        return i >= 0 and (raw.startswith("true", i + 4) or raw.startswith(" true", i + 4))
    i = raw.rfind(b'"x":')
    return i >= 0 and (raw.startswith(b"true", i + 4) or raw.startswith(b" true", i + 4))


def last_price(raw: bytes | str) -> float:
    """The close (`k.c`) of a kline message, by substring search, for open-candle updates.

    Only valid on kline stream messages (they have exactly one `"c"` key).  Raises
    MessageError when the field is missing, not a number, or not finite and > 0."""
    data = raw.encode() if isinstance(raw, str) else raw
    start = data.find(b'"c":"')
    width = 5
    if start < 0:
        start, width = data.find(b'"c": "'), 6
    end = data.find(b'"', start + width) if start >= 0 else -1
    try:
        price = float(data[start + width : end]) if end > 0 else _INF
    except ValueError:
        price = _INF
    if 0.0 < price < _INF:
        return price
    raise MessageError("kline close price missing or invalid", excerpt(raw))


def price_tick(raw: bytes | str | dict[str, Any]) -> PriceTick:
    """Symbol, close, event time and `x` of a kline message.  This is a full
    `parse_kline_message` (msgspec skipping unwanted fields is no faster than decoding
    them); use `last_price` when the symbol is known from the connection."""
    ev = parse_kline_message(raw)
    return PriceTick(ev.s, ev.k.c, ev.E, ev.k.x)


# ---- user data -----------------------------------------------------------------------------

_MARGIN_TYPES = frozenset({"isolated", "cross"})
_POSITION_SIDES = frozenset({"BOTH", "LONG", "SHORT"})
_SIDES = frozenset({"BUY", "SELL"})
# Decimal fields that may be negative; every other Decimal must be >= 0.
_SIGNED = frozenset({"wb", "cw", "bc", "pa", "up", "cr", "n", "rp"})


def parse_user_event(raw: bytes | str | dict[str, Any]) -> UserEvent:
    """Decode and check one user-data-stream message (optionally in a combined wrapper).
    Raises MessageError for anything else, `ignorable=True` for documented event types
    that we do not model (see IGNORED_USER_EVENTS)."""
    try:
        if isinstance(raw, dict):
            body = raw["data"] if "data" in raw and "e" not in raw else raw
            kind = body.get("e") if isinstance(body, dict) else None
            event_type = _user_type(kind, raw)
            event = msgspec.convert(body, event_type, strict=False)
        elif isinstance(raw, bytes | str | bytearray | memoryview):
            head = _HEAD.decode(raw)
            if head.e is None and len(head.data):
                return parse_user_event(bytes(head.data))
            _user_type(head.e, raw)
            event = _USER_DECODERS[head.e].decode(raw)  # type: ignore[index]
        else:
            raise MessageError(f"unsupported message type {type(raw).__name__}", excerpt(raw))
    except _DECODE_ERRORS as exc:
        raise MessageError(f"bad user event: {exc}", excerpt(raw)) from None
    fault = _user_fault(event)
    if fault:
        raise MessageError(fault, excerpt(raw))
    return event  # type: ignore[no-any-return]


def _user_type(kind: Any, raw: Any) -> type[Any]:
    event_type = _USER_TYPES.get(kind) if isinstance(kind, str) else None
    if event_type is None:
        ignorable = kind in IGNORED_USER_EVENTS
        raise MessageError(f"unknown event type {kind!r}", excerpt(raw), ignorable=ignorable)
    return event_type


def _user_fault(event: Any) -> str:
    """The first broken rule of a decoded user event, or '' when it is sound."""
    if event.E <= 0:
        return "event time must be > 0"
    if isinstance(event, AccountUpdateEvent):
        parts: list[_Wire] = [*event.a.B, *event.a.P]
        for p in event.a.P:
            if not _symbol_ok(p.s) or p.mt not in _MARGIN_TYPES or p.ps not in _POSITION_SIDES:
                return f"bad position entry {p.s!r}/{p.mt!r}/{p.ps!r}"
    elif isinstance(event, OrderTradeUpdateEvent | AlgoUpdateEvent):
        o = event.o
        if not _symbol_ok(o.s) or o.S not in _SIDES or o.ps not in _POSITION_SIDES:
            return f"bad order symbol/side/positionSide {o.s!r}/{o.S!r}/{o.ps!r}"
        parts = [o]
    elif isinstance(event, AccountConfigUpdateEvent):
        if event.ac is None and event.ai is None:
            return "config update without `ac` or `ai`"
        if event.ac is not None and (not _symbol_ok(event.ac.s) or event.ac.l < 1):
            return f"bad leverage config {event.ac.s!r} x{event.ac.l}"
        parts = []
    else:
        parts = []
    for part in parts:
        for name in part.__struct_fields__:
            value = getattr(part, name)
            if isinstance(value, Decimal):
                if not value.is_finite():
                    return f"`{name}` is not finite"
                if value < 0 and name not in _SIGNED:
                    return f"`{name}` must be >= 0, got {value}"
    return ""
