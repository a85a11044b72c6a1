"""The simulated broker: a thin adapter over the simulator's matching engine.

WHY an adapter and not a fill model: matching, slippage, fees, funding, margin and
liquidation live in ONE place, `services.exchange_sim.engine.Exchange`, which also serves
the simulator's REST/WebSocket protocol.  The backtest sends the same request parameters a
live service would send (`OrderIntent.to_params()`, the position controller's
`algo_params`), gets the same Binance user-data payloads back, and turns them into domain
events exactly as the live services do (`parse_account_event` -> `AccountUpdate.from_event`
& co.).  Nothing here computes a price, a fee or a PnL.

Besides forwarding, the broker keeps a float mirror of what the events said (wallet,
position size/entry, open algo trigger prices, resting limit prices, leverage) - what a
live client would know - so the runner can tell cheaply when the next engine tick cannot
change anything (see watch.py), and can draw the equity curve without Decimal work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from services.exchange_sim.engine import EngineEvent, EngineReject, Exchange
from services.exchange_sim.engine.exchange import DEFAULT_FUNDING_RATE, EIGHT_HOURS_MS
from services.exchange_sim.specs import SymbolSpec
from services.position_controller.executor import algo_params
from services.position_controller.inputs import AccountEvent, parse_account_event, position_rows
from shared.models import (
    AccountUpdate,
    AlgoUpdate,
    Balance,
    ConfigUpdate,
    OrderIntent,
    OrderUpdate,
)

ACCOUNT = "backtest"
_OPEN_ALGO = frozenset({"NEW"})
_OPEN_ORDER = frozenset({"NEW", "PARTIALLY_FILLED"})
_CONDITIONAL = frozenset({"STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP", "TAKE_PROFIT",
                          "TRAILING_STOP_MARKET"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reject:
    """An order the engine refused (Binance code and message), for the run's report."""

    time: int
    symbol: str
    client_order_id: str
    purpose: str
    code: int
    msg: str


def _plain(params: dict[str, Any]) -> dict[str, str]:
    """Request parameters as strings, as they travel over REST (bools as true/false)."""
    return {k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in params.items()}  # fmt: skip


class SimBroker:
    """One account on one `Exchange`; every call takes the simulated time."""

    def __init__(
        self,
        specs: dict[str, SymbolSpec],
        equity: Decimal,
        *,
        taker_fee: Decimal,
        maker_fee: Decimal,
        slippage_bps: Decimal = Decimal(1),
        funding_rate: Decimal = DEFAULT_FUNDING_RATE,
        funding_interval_ms: int = EIGHT_HOURS_MS,
    ) -> None:
        rate = Decimal(funding_rate)
        self.exchange = Exchange(
            dict(specs), taker_fee=Decimal(taker_fee), maker_fee=Decimal(maker_fee),
            slippage_bps=Decimal(slippage_bps), funding_enabled=True,
            funding_interval_ms=funding_interval_ms, funding_rate_fn=lambda s, t: rate,
            record=False,
        )  # fmt: skip
        self.exchange.add_account(ACCOUNT, Decimal(equity))
        self.funding_interval_ms = funding_interval_ms
        self.initial_equity = float(equity)
        self.wallet = float(equity)
        # the balance as account_feed caches it: the last ACCOUNT_UPDATE's row
        self.balance_row = Balance("USDT", Decimal(equity), Decimal(equity), Decimal(0), 0)
        self.amount: dict[str, float] = {}  # signed size of open positions
        self.entry: dict[str, float] = {}
        self.leverage: dict[str, int] = {}
        self.algos: dict[str, dict[int, tuple[float, str]]] = {}  # sym -> id -> (trigger, type)
        self.limits: dict[str, dict[int, float]] = {}  # resting LIMIT prices
        self.open: set[str] = set()  # symbols with a position, algo or resting order
        self.unprotected: set[str] = set()  # positions without both a stop and a target
        self.last: dict[str, float] = {}  # last price the engine saw
        self.last_ts: dict[str, int] = {}
        self.rejects: list[Reject] = []
        self.reject_codes: Counter[int] = Counter()
        self.ticks = 0
        self.on_change: Callable[[str], None] | None = None  # symbol whose state moved

    # ---- market ----------------------------------------------------------------------
    def advance(self, symbol: str, price: float, ts: int) -> list[EngineEvent]:
        """One engine tick (last = mark = `price`, a tick-rounded float)."""
        self.ticks += 1
        self.last[symbol] = price
        self.last_ts[symbol] = ts
        return self.exchange.advance_price(symbol, Decimal(repr(price)), ts)

    def active(self, symbol: str) -> bool:
        """A position, an open algo order or a resting order: ticks may do something."""
        return symbol in self.open

    # ---- orders ----------------------------------------------------------------------
    def submit(self, intent: OrderIntent, ts: int) -> tuple[bool, list[EngineEvent]]:
        """Send one intent as the live services would: entries set their leverage first
        (POST /fapi/v1/leverage), conditional orders go to the algo endpoint.  A refusal
        is recorded and returns (False, events so far)."""
        events: list[EngineEvent] = []
        ex = self.exchange
        try:
            lev = intent.leverage
            if lev is not None and self.leverage.get(intent.symbol) != lev:
                events += ex.set_leverage(ACCOUNT, intent.symbol, lev, ts)[1]
            if intent.order_type in _CONDITIONAL:
                params = {"algoType": "CONDITIONAL", **_plain(algo_params(intent))}
                events += ex.place_algo_order(ACCOUNT, params, ts)[1]
            else:
                events += ex.place_order(ACCOUNT, intent.to_params(), ts)[1]
        except EngineReject as exc:
            self.rejects.append(Reject(ts, intent.symbol, intent.client_order_id,
                                       intent.purpose, exc.code, exc.msg))  # fmt: skip
            self.reject_codes[exc.code] += 1
            return False, events
        return True, events

    def cancel_algo(self, client_algo_id: str, ts: int) -> list[EngineEvent]:
        """DELETE /fapi/v1/algoOrder by client id; a refusal (already gone) is recorded."""
        try:
            return self.exchange.cancel_algo_order(ACCOUNT, client_algo_id=client_algo_id,
                                                   ts_ms=ts)[1]  # fmt: skip
        except EngineReject as exc:
            self.reject_codes[exc.code] += 1
            return []

    def cancel_algos(self, symbol: str, ts: int) -> list[EngineEvent]:
        """Cancel the symbol's open conditional orders (DELETE /fapi/v1/algoOpenOrders)."""
        return self.exchange.cancel_all_algo(ACCOUNT, symbol, ts)[1]

    def orphaned(self) -> list[str]:
        """Flat symbols that still have open conditional orders (a position's other leg
        after its stop or target filled, or both after a market close)."""
        return [s for s, a in self.algos.items() if a and not self.amount.get(s)]

    def protected(self, symbol: str) -> bool:
        """The open position has a stop-type and a take-profit-type order."""
        kinds = {t.startswith("STOP") for _, t in self.algos.get(symbol, {}).values()}
        return kinds == {True, False}

    # ---- what the account looks like -------------------------------------------------
    def snapshot(self) -> tuple[list[Any], list[dict[str, Any]], dict[str, Decimal]]:
        """(positions, open algo orders, liquidation prices) as the position controller's
        sweep reads them over REST (positionRisk v3, openAlgoOrders)."""
        rows = self.exchange.position_risk(ACCOUNT, version=3)
        positions, liq, _lev, _bad = position_rows(rows)
        return positions, self.exchange.open_algo_orders(ACCOUNT), liq

    def liquidation_price(self, symbol: str) -> float:
        """The engine's liquidation price of the symbol's position (0: none)."""
        row = self.exchange.position_risk(ACCOUNT, symbol, version=2)[0]
        return float(row["liquidationPrice"])

    def equity_at(self, closes: dict[str, float]) -> tuple[float, float]:
        """(equity, gross notional) at the given prices, from the mirror (floats)."""
        eq, notional = self.wallet, 0.0
        for s, amt in self.amount.items():
            p = closes.get(s, self.last.get(s, 0.0))
            eq += amt * (p - self.entry[s])
            notional += abs(amt) * p
        return eq, notional

    def ledger(self) -> dict[str, Decimal]:
        """The engine's own running totals (realized, fees, funding, liquidation fees)."""
        lg = self.exchange.accounts[ACCOUNT].ledger
        return {"realized_pnl": lg.realized_pnl, "fees": lg.fees, "funding": lg.funding,
                "adjustments": lg.adjustments}  # fmt: skip

    # ---- events ----------------------------------------------------------------------
    def domain(self, events: Iterable[EngineEvent]) -> list[AccountEvent]:
        """Engine payloads -> domain events, through the live parser; mirror updated."""
        out = []
        for ev in events:
            dom = parse_account_event(ev.event_type, ev.payload)
            if dom is not None:
                self._observe(dom)
                out.append(dom)
        return out

    def _observe(self, ev: AccountEvent) -> None:
        if isinstance(ev, AccountUpdate):
            for b in ev.balances:
                self.wallet = float(b.wallet_balance)
                self.balance_row = b
            for p in ev.positions:
                if p.amount:
                    self.amount[p.symbol] = float(p.amount)
                    self.entry[p.symbol] = float(p.entry_price)
                else:
                    self.amount.pop(p.symbol, None)
                    self.entry.pop(p.symbol, None)
                self._changed(p.symbol)
        elif isinstance(ev, AlgoUpdate):
            book = self.algos.setdefault(ev.symbol, {})
            if ev.status in _OPEN_ALGO:
                book[ev.algo_id] = (float(ev.trigger_price), ev.order_type)
            else:
                book.pop(ev.algo_id, None)
            self._changed(ev.symbol)
        elif isinstance(ev, OrderUpdate):
            if ev.order_type == "LIMIT":
                book2 = self.limits.setdefault(ev.symbol, {})
                if ev.status in _OPEN_ORDER:
                    book2[ev.order_id] = float(ev.price)
                else:
                    book2.pop(ev.order_id, None)
                self._changed(ev.symbol)
        elif isinstance(ev, ConfigUpdate) and ev.symbol and ev.leverage:
            self.leverage[ev.symbol] = ev.leverage
            self._changed(ev.symbol)

    def _changed(self, symbol: str) -> None:
        if self.amount.get(symbol) or self.algos.get(symbol) or self.limits.get(symbol):
            self.open.add(symbol)
        else:
            self.open.discard(symbol)
        if self.amount.get(symbol) and not self.protected(symbol):
            self.unprotected.add(symbol)
        else:
            self.unprotected.discard(symbol)
        if self.on_change is not None:
            self.on_change(symbol)
