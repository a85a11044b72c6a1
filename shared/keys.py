"""Every Redis key and stream name, built in one place.

Names explain themselves in `redis-cli`.  Each entry notes its one writer and its
readers, so an operator (and a reviewer) knows who owns what.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder bound to a deployment prefix (default `slt:`)."""

    prefix: str = "slt:"

    # ---- streams (events) --------------------------------------------------
    @property
    def stream_klines(self) -> str:
        """Closed klines. Writer: kline_feed, rest_fallback (same exactly-once script).
        Readers: trader, position_controller, reporter."""
        return f"{self.prefix}stream:klines"

    @property
    def stream_account(self) -> str:
        """User-data events. Writer: account_feed. Readers: position_controller, reporter."""
        return f"{self.prefix}stream:account"

    @property
    def stream_signals(self) -> str:
        """Every ranked decision, taken or not, and why. Writer: trader. Reader: reporter."""
        return f"{self.prefix}stream:signals"

    @property
    def stream_orders(self) -> str:
        """Order requests and results. Writers: trader, position_controller. Reader: reporter."""
        return f"{self.prefix}stream:orders"

    @property
    def stream_trades(self) -> str:
        """Closed trades with outcome. Writer: position_controller. Readers: trader, reporter."""
        return f"{self.prefix}stream:trades"

    @property
    def stream_risk(self) -> str:
        """Risk actions (exit rule decisions). Writer: position_controller. Reader: reporter."""
        return f"{self.prefix}stream:risk"

    @property
    def stream_reports(self) -> str:
        """Daily reports. Writer: reporter."""
        return f"{self.prefix}stream:reports"

    @property
    def stream_alerts(self) -> str:
        """Alerts (service down, breaker open, ...). Writers: any. Reader: reporter."""
        return f"{self.prefix}stream:alerts"

    def stream(self, name: str) -> str:
        """Stream by short name (`klines`, `account`, ...), for the CLI's `slt tail`."""
        return f"{self.prefix}stream:{name}"

    @staticmethod
    def dead_letter(stream: str) -> str:
        """Dead-letter stream of `stream`: entries a consumer group failed to handle
        `max_deliveries` times (or marked poison). Writer: shared.bus.Consumer of any
        service. Reader: an operator (`redis-cli XRANGE <stream>:dead - +`), reporter."""
        return f"{stream}:dead"

    # ---- latest state (hashes) ---------------------------------------------
    def kline(self, symbol: str) -> str:
        """Latest closed kline of a symbol (seed cache format), written a few ms after
        its stream entry, never by an older kline.  Writer: shared.kline_publisher's cache
        script only (kline_feed, rest_fallback).  Readers: get_cached_kline, rest_fallback
        (and `last_open_times` for a symbol the guard hash has no field for yet).
        (The old guard hash `kline:last_open_time` of the first deployments is dead data.)"""
        return f"{self.prefix}kline:{symbol}"

    @property
    def klines_last_published(self) -> str:
        """The exactly-once guard: hash symbol -> open time of its last kline in
        `stream:klines`.  Writer: shared.kline_publisher's publish script only (with the
        XADD, atomically).  Reader: `KlinePublisher.last_open_times`."""
        return f"{self.prefix}klines:last_published"

    @property
    def prices(self) -> str:
        """Hash symbol -> last trade price from open-candle updates. Writer: kline_feed."""
        return f"{self.prefix}prices"

    @property
    def prices_updated(self) -> str:
        """Hash symbol -> ms time the price was received."""
        return f"{self.prefix}prices:updated_at"

    def position(self, symbol: str) -> str:
        """Position of a symbol (seed cache format). Writer: account_feed (rest_fallback when
        account_feed is down, position_controller on reconciliation)."""
        return f"{self.prefix}position:{symbol}"

    def balance(self, asset: str) -> str:
        """Balance of an asset. Writer: account_feed."""
        return f"{self.prefix}balance:{asset}"

    @property
    def account_state(self) -> str:
        """Hash with last event time per symbol/asset (older events never overwrite newer).
        Fields `position:<SYM>`, `balance:<ASSET>`, `leverage:<SYM>` -> epoch ms.
        Writers: account_feed, rest_fallback (shared/account_cache.py, one Lua script)."""
        return f"{self.prefix}account:event_time"

    @staticmethod
    def position_slot(symbol: str) -> str:
        """Field of `account_state` with the event time of `position(symbol)` (kept after
        a close deletes the hash).  Reader: trader (is a flat cache newer than our fill?)."""
        return f"position:{symbol}"

    @property
    def account_leverage(self) -> str:
        """Hash symbol -> leverage (symbolConfig at start, ACCOUNT_CONFIG_UPDATE after):
        ACCOUNT_UPDATE and positionRisk v3 carry none.  Writer: account_feed.
        Readers: account_feed's cache script (fills `leverage` in position hashes)."""
        return f"{self.prefix}account:leverage"

    def health(self, service: str) -> str:
        """Heartbeat + stats of one service instance (TTL). Writer: that service."""
        return f"{self.prefix}health:{service}"

    @property
    def health_pattern(self) -> str:
        return f"{self.prefix}health:*"

    def health_instances_pattern(self, service: str) -> str:
        """Every heartbeat of one service, sharded or not (`kline_feed`, `kline_feed:2`).
        Reader: rest_fallback (is any kline_feed / account_feed alive?)."""
        return f"{self.prefix}health:{service}*"

    # ---- sharding ----------------------------------------------------------
    def shard_lease(self, service: str, index: int) -> str:
        """Lease on shard `index` of a scaled-out service (value: the holder's token, with
        a TTL renewed by the holder).  Writer: a replica started with instance_index=-1
        (AUTO), e.g. `docker compose up --scale kline_feed=3`."""
        return f"{self.prefix}shard:{service}:{index}"

    # ---- control -----------------------------------------------------------
    @property
    def halt(self) -> str:
        """Global halt switch: when set, no new entries. Writer: CLI (`slt halt`)."""
        return f"{self.prefix}control:halt"

    # ---- model / learning --------------------------------------------------
    @property
    def model_current(self) -> str:
        """Id of the model version in use. Writer: trader."""
        return f"{self.prefix}model:current"

    @property
    def model_history(self) -> str:
        """Hash version id -> JSON metadata of every model trained. Writer: trader."""
        return f"{self.prefix}model:versions"

    @property
    def trader_last_decided(self) -> str:
        """Open time (ms) of the last minute the trader decided, so a minute replayed
        after a restart is not decided (or published) twice. Writer and reader: trader."""
        return f"{self.prefix}trader:last_decided_minute"

    @property
    def trader_entries(self) -> str:
        """Hash symbol -> JSON of the trader's last entry there (fill time, still held until
        the account cache or REST confirms it), so a restart never re-enters a symbol the
        cache has not caught up with.  Writer and reader: trader (services/trader/holds.py)."""
        return f"{self.prefix}trader:entries"

    @property
    def learner_seen(self) -> str:
        """Set of closed-trade ids the learner has taken (each once). Writer: trader."""
        return f"{self.prefix}learner:seen_trades"

    def decision(self, client_order_id: str) -> str:
        """Entry decision record (features, model, stop, target). Writer: trader.
        Reader: position_controller (joins it to the closed trade)."""
        return f"{self.prefix}decision:{client_order_id}"

    @property
    def open_trades(self) -> str:
        """Hash symbol -> JSON of the open trade (entry fills, decision id). Writer:
        position_controller."""
        return f"{self.prefix}trades:open"

    @property
    def trades_recorded(self) -> str:
        """Set of closed-trade ids already written to the trades stream (exactly once)."""
        return f"{self.prefix}trades:recorded"

    @property
    def pc_state(self) -> str:
        """JSON of the position controller's state: open times, last applied account event
        per symbol, tracked positions, ledger lots (so a restart resumes mid-trade without
        a double close). Writer and reader: position_controller."""
        return f"{self.prefix}position_controller:state"

    @property
    def pc_orders(self) -> str:
        """Hash client order id -> JSON outcome of each close / protective order the
        position controller sent (a decision replayed after a restart is not sent again).
        Writer and reader: position_controller."""
        return f"{self.prefix}position_controller:orders"

    @property
    def orders_sent(self) -> str:
        """Set of client order ids already sent (a replayed decision is not re-sent)."""
        return f"{self.prefix}orders:sent"

    # ---- REST budget (shared by every service and replica) -----------------
    def rest_weight(self, account: str, minute: int) -> str:
        """Request weight used in one minute by one key/IP. Writer: every REST client."""
        return f"{self.prefix}ratelimit:{account}:weight:{minute}"

    def rest_banned_until(self, account: str) -> str:
        """Epoch ms until which no request may be sent (429/418 Retry-After)."""
        return f"{self.prefix}ratelimit:{account}:banned_until"

    # ---- reporter ----------------------------------------------------------
    @property
    def report_days(self) -> str:
        """Set of UTC dates (YYYY-MM-DD) already reported (one report per day)."""
        return f"{self.prefix}reports:done"

    @property
    def report_baselines(self) -> str:
        """Hash UTC date -> JSON {equity, feed counters} taken at the day's first event, so
        a report shows the day's opening equity and feed counters over the day.
        Writer: reporter. Reader: reporter (`slt report`)."""
        return f"{self.prefix}reports:baselines"

    @property
    def alerts_active(self) -> str:
        """Hash alert id -> JSON of alerts currently raised (one alert per condition)."""
        return f"{self.prefix}alerts:active"
