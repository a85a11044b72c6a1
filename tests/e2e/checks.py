"""The figures of a chaos run (except klines and secrets, which have their own modules):
orders, caches against the exchange, closed trades and the learner, health against the
faults injected.  Each function takes data already collected and returns Figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .config import SERVICES
from .exchange import ExchangeSnapshot
from .faults import FaultLog
from .figures import Figure, at_least, at_most, exact, info
from .monitor import HealthTracker, ProtectionWatch

ZERO = Decimal(0)


# ---- orders ----------------------------------------------------------------------------
def order_figures(audit: Mapping[str, Any], watch: ProtectionWatch, cap: int,
                  grace_s: float) -> list[Figure]:  # fmt: skip
    s = "orders"
    orders = audit["orders"]
    by_kind = Counter(o["kind"] for o in orders)
    rejects = Counter(str(r["code"]) for r in audit["rejects"])
    worst = ", ".join(f"{sym} {sec}s" for sym, sec in watch.violations[:5])
    by_lev = {int(k): v for k, v in audit.get("fills_by_leverage", {}).items()}
    over = sum(v for k, v in by_lev.items() if k > cap)
    return [
        info(s, "orders accepted by the exchange", len(orders),
             ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))),
        info(s, "orders rejected", sum(rejects.values()),
             ", ".join(f"{k}: {v}" for k, v in rejects.most_common(4))),
        exact(s, "duplicate client order ids", len(audit["duplicates"]), 0,
              ", ".join(":".join(d[1:]) for d in audit["duplicates"][:3])),
        info(s, "symbols that held a position", len(watch.positions_seen)),
        info(s, "positions open at once (max)", watch.max_open),
        exact(s, "fills at a leverage above the cap", over, 0,
              "every fill: " + ", ".join(f"{k}x {v}" for k, v in sorted(by_lev.items()))),
        at_most(s, "max leverage of an open position", watch.max_leverage, cap),
        exact(s, "samples above the leverage cap", len(watch.over_cap), 0),
        at_most(s, "max notional / position margin", round(watch.max_effective_leverage, 3),
                cap),
        info(s, "exchange samples (positions vs stops)", watch.samples),
        info(s, "longest without a stop-loss (s)", round(watch.longest_unprotected_s, 2)),
        exact(s, f"positions without stop > {grace_s:g} s", len(watch.violations), 0, worst),
    ]  # fmt: skip


# ---- caches -----------------------------------------------------------------------------
def _dec(raw: Any) -> Decimal:
    try:
        return Decimal(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ArithmeticError:
        return Decimal("NaN")


def cache_diffs(snap: ExchangeSnapshot, positions: Mapping[str, Mapping[bytes, bytes]],
                balance: Mapping[bytes, bytes]) -> list[str]:  # fmt: skip
    """Every difference between the position/balance hashes and the exchange."""
    diffs = []
    for symbol in sorted(set(snap.positions) | set(positions)):
        ex = snap.positions.get(symbol)
        h = positions.get(symbol, {})
        size = _dec(h.get(b"size", b"0"))
        want = ex.size if ex else ZERO
        if size != want:
            diffs.append(f"{symbol} size {size} != {want}")
        elif ex is not None and _dec(h.get(b"entry_price", b"0")) != ex.entry_price:
            diffs.append(f"{symbol} entry {h.get(b'entry_price')!r} != {ex.entry_price}")
    wallet = snap.balances.get("USDT")
    got = _dec(balance.get(b"wallet_balance", b"NaN"))
    if wallet is None or got != wallet:
        diffs.append(f"USDT wallet {got} != {wallet}")
    return diffs


def cache_figures(snap: ExchangeSnapshot, diffs: list[str], settle_s: float) -> list[Figure]:
    """Caches against the exchange, and no close-only leg left behind by a closed
    position (it would close the symbol's next position at the old level)."""
    s = "caches"
    orphans = [f"{a.symbol} {a.order_type} {a.client_id}" for a in snap.algos
               if a.symbol not in snap.positions and (a.close_position or a.reduce_only)]  # fmt: skip
    return [
        info(s, "open positions on the exchange", len(snap.positions)),
        info(s, "exchange wallet (USDT)", str(snap.balances.get("USDT"))),
        exact(s, "positions/balances differing from exchange", len(diffs), 0,
              "; ".join(diffs[:3])),
        info(s, "seconds to converge after the last event", round(settle_s, 2)),
        exact(s, "stop/target orders left on flat symbols", len(orphans), 0,
              ", ".join(orphans[:3])),
    ]  # fmt: skip


# ---- closed trades ----------------------------------------------------------------------
@dataclass(frozen=True)
class RoundTrip:
    symbol: str
    entry_time: int
    exit_time: int
    quantity: Decimal  # the largest absolute position of the trip


def round_trips(fills: list[Mapping[str, Any]]) -> list[RoundTrip]:
    """Round trips on the exchange from its fill audit: a position opened from flat and
    brought back to flat (a flip through zero closes one and opens the next)."""
    pos: dict[str, Decimal] = defaultdict(Decimal)
    opened: dict[str, tuple[int, Decimal]] = {}
    out = []
    for f in sorted(fills, key=lambda f: (int(f["ts"]), int(f["trade_id"]))):
        sym, ts = f["symbol"], int(f["ts"])
        qty = Decimal(f["qty"]) * (1 if f["side"] == "BUY" else -1)
        before, after = pos[sym], pos[sym] + qty
        if before == 0 and after != 0:
            opened[sym] = (ts, abs(after))
        elif before != 0 and (after == 0 or (after > 0) != (before > 0)):
            t0, peak = opened.pop(sym, (ts, abs(before)))
            out.append(RoundTrip(sym, t0, ts, peak))
            if after != 0:
                opened[sym] = (ts, abs(after))
        elif after != 0 and sym in opened:
            t0, peak = opened[sym]
            opened[sym] = (t0, max(peak, abs(after)))
        pos[sym] = after
    return out


@dataclass
class TradeMatch:
    matched: list[tuple[RoundTrip, Mapping[str, Any]]]
    unrecorded: list[RoundTrip]  # closed on the exchange, no trade in the stream
    phantom: list[Mapping[str, Any]]  # in the stream, no round trip on the exchange


def match_trades(trips: list[RoundTrip], trades: list[Mapping[str, Any]]) -> TradeMatch:
    """Pair each recorded trade with the exchange round trip whose time span it overlaps
    (same symbol, first come first served); a recorded entry time may differ from the
    first fill's (a position adopted from REST), the span may not."""
    free = sorted(trips, key=lambda t: (t.symbol, t.entry_time))
    out = TradeMatch([], [], [])
    for t in sorted(trades, key=lambda t: (str(t["symbol"]), int(t["entry_time"]))):
        e, x = int(t["entry_time"]), int(t["exit_time"])
        hit = next((r for r in free if r.symbol == t["symbol"]
                    and e <= r.exit_time and r.entry_time <= x), None)  # fmt: skip
        if hit is None:
            out.phantom.append(t)
        else:
            free.remove(hit)
            out.matched.append((hit, t))
    out.unrecorded = free
    return out


def trade_figures(trips: list[RoundTrip], trades: list[Mapping[str, Any]],
                  learner_seen: set[str], learned_total: float) -> list[Figure]:  # fmt: skip
    s = "trades"
    ids = [str(t["trade_id"]) for t in trades]
    m = match_trades(trips, trades)
    wrong_qty = [(r, t) for r, t in m.matched if Decimal(str(t["quantity"])) != r.quantity]
    moved = [(r, t) for r, t in m.matched if int(t["entry_time"]) != r.entry_time]
    return [
        info(s, "round trips closed on the exchange", len(trips)),
        info(s, "entries in stream:trades", len(trades)),
        exact(s, "trade ids recorded more than once", len(ids) - len(set(ids)), 0),
        exact(s, "closed on exchange, not recorded", len(m.unrecorded), 0,
              ", ".join(f"{r.symbol}@{r.entry_time}" for r in m.unrecorded[:3])),
        exact(s, "recorded, not closed on exchange", len(m.phantom), 0,
              ", ".join(str(t["trade_id"]) for t in m.phantom[:3])),
        exact(s, "recorded with a wrong quantity", len(wrong_qty), 0,
              ", ".join(f"{t['trade_id']}: {t['quantity']} != {r.quantity}"
                        for r, t in wrong_qty[:2])),
        info(s, "recorded with another entry time", len(moved),
             "position adopted from REST: the entry fill was not seen"),
        exact(s, "learner seen != recorded trades", len(learner_seen ^ set(ids)), 0),
        at_most(s, "trades learned (sum over trader processes)", learned_total, len(set(ids)),
                "a restart restores, does not re-learn"),
    ]  # fmt: skip


# ---- health -----------------------------------------------------------------------------
def health_figures(statuses: Mapping[str, str], tracker: HealthTracker, faults: FaultLog,
                   restarts: Mapping[str, int], kills: Mapping[str, int],
                   redis_restarts: int, sim_keys: Mapping[str, int]) -> list[Figure]:  # fmt: skip
    """Every service `ok`; restarts exactly the kills; each counter against the faults
    that must have moved it: `==` where nothing else can move it, `>=` (with the reason)
    where other events legitimately add to it."""
    s = "health"
    out = [exact(s, f"{svc} status at the end", statuses.get(svc, "absent"), "ok")
           for svc in SERVICES]  # fmt: skip
    out += [exact(s, f"{svc} restarts == kill -9", restarts.get(svc, 0), kills.get(svc, 0))
            for svc in SERVICES]  # fmt: skip
    out += _counters_vs_faults(tracker, faults)
    ok = tracker.total("account_feed", "renewals_ok")
    kept = sim_keys.get("kept_alive", 0)
    out += [
        at_most(s, "renewals: |account_feed ok - exchange kept alive|", abs(ok - kept),
                kills.get("account_feed", 0),
                f"{ok:g} vs {kept}; a kill right after a PUT loses its count"),
        info(s, "rest_fallback klines published",
             tracker.total("rest_fallback", "klines_published")),
        info(s, "kline_feed klines backfilled", tracker.total("kline_feed", "backfilled_klines")),
        info(s, "redis restarts", redis_restarts),
        exact(s, "faults that could not be injected", len(faults.failed), 0,
              "; ".join(faults.failed[:2])),
    ]  # fmt: skip
    return out


def _counters_vs_faults(t: HealthTracker, faults: FaultLog) -> list[Figure]:
    s, d, h = "health", faults.done, faults.hits
    out = [
        exact(s, "kline_feed bad messages", t.total("kline_feed", "bad_messages"),
              h["ws_malformed_market"], "== malformed frames sent to it"),
        exact(s, "account_feed bad messages", t.total("account_feed", "bad_messages"),
              h["ws_malformed_user"], "== malformed frames sent to it"),
        exact(s, "429 received (rate_limit_hits)", t.total_matching(None, "rate_limit_hits"),
              d["rest_429"], "== 429 injected"),
        exact(s, "418 received (bans)", t.total_matching(None, "bans"), d["rest_418"],
              "== 418 injected"),
    ]  # fmt: skip
    ge = [
        ("kline_feed reconnects", t.total("kline_feed", "reconnects"),
         h["ws_drop_klines"] + d["ws_stall_market"],
         ">= drops + stalls: the exchange's 24 h socket cut and freezes add"),
        ("kline_feed duplicates suppressed", t.total("kline_feed", "duplicates_suppressed"),
         h["ws_duplicate"], ">= duplicate closes sent: backfill/REST races add"),
        ("position_controller mark reconnects",
         t.total("position_controller", "mark_prices.reconnects"), h["ws_drop_marks"],
         ">= drops: stalls and the 24 h cut add"),
        ("account_feed reconnects", t.total("account_feed", "reconnects"),
         h["ws_drop_user"] + d["listenkey_expire"], ">= drops + expiries: bans, freezes add"),
        ("account_feed keys invalidated", t.total("account_feed", "key_invalidations"),
         h["listenkey_expire"], ">= expiries: keys given up during bans add"),
        ("account_feed renewal failures", t.total("account_feed", "renewal_failures"),
         d["keepalive_fail"], ">= keepalive faults: keepalives refused during bans add"),
        ("breaker openings (all services)", t.total_matching(None, "breaker_opens"),
         d["rest_5xx_burst"], ">= bursts of 30: one burst opens several clients' breakers"),
        ("rest_fallback kline_feed_down", t.total("rest_fallback",
         "activations.kline_feed_down"), d["freeze_kline_feed"], ">= freezes: kills may add"),
        ("rest_fallback account_feed_down", t.total("rest_fallback",
         "activations.account_feed_down"), d["freeze_account_feed"],
         ">= freezes: kills may add"),
    ]  # fmt: skip
    out += [at_least(s, name, value, want, why) for name, value, want, why in ge]
    return out
