"""How fast does the exchange simulator push klines? (`python -m bench.bench_sim_ws`)

Setup: the simulator runs as its own process (`python -m services.exchange_sim`, 200
symbols, 10 open-candle updates + 1 closing kline per symbol per simulated minute); one
client in this process subscribes to all 200 `<symbol>@kline_1m` streams on one combined
connection (`/market/stream?streams=...`) and parses every message with orjson.

Expected rate = 200 x 11 x speed / 60 messages/s (speed 60 -> 2.2k/s, 1500 -> 55k/s).
For each speed it prints messages/s received, the server process's CPU% (/proc), and how
far the simulated clock ran ahead of the last event received (lag > 0 means the server or
the client could not keep up and back-pressure slowed the stream down).

Reference, same run, same client: a naive aiohttp server that sends one pre-encoded
kline-sized message per `ws.send_frame` call in a tight loop — the ceiling of this client
and of a per-message server write path.

First, in this process (no sockets, so the shared machine's noise matters less): the
simulator's driver + encoder + write path for `--inproc-minutes` simulated minutes into a
counting transport, against a naive reference over the same minutes — `bar_updates` per
bar, a dict + `orjson.dumps` + combined wrapper per message, one `write` per message —
alternated `--rounds` times; CPU us per message for both, and whether their bytes are
identical (they must be: the fast path may not change the wire).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (
    b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1700000046666,"s":"BTCUSDT",'
    b'"k":{"t":1700000040000,"T":1700000099999,"s":"BTCUSDT","i":"1m","f":491455,'
    b'"L":498525,"o":"30028.90","c":"30035.60","h":"30046.90","l":"30009.30","v":"81.139",'
    b'"n":7071,"x":false,"q":"2436652.85340","V":"43.339","Q":"1301912.04411","B":"0"}}}'
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux; no extra dependency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_sim(symbols: int, speed: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "services.exchange_sim", "--port", "0", "--symbols", str(symbols),
        "--speed", str(speed), "--history-minutes", "5", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("SLT_EXCHANGE__WS_URL="):
            return proc, line.strip().split("=", 1)[1]
    raise RuntimeError("simulator did not print its URL")


async def consume(url: str, seconds: float, warmup: float) -> tuple[int, float, int]:
    """(messages in the window, window seconds, E of the last message)."""
    count = 0
    last_e = 0
    async with aiohttp.ClientSession() as session:
        # no `async with` on the socket: a graceful close would read a flooding server
        # forever; closing the session aborts the connection instead.
        ws = await session.ws_connect(url, max_msg_size=0, compress=0)
        t_end_warm = time.perf_counter() + warmup
        while time.perf_counter() < t_end_warm:
            await ws.receive()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            last_e = orjson.loads(msg.data)["data"]["E"]
            count += 1
            if count & 255 == 0 and time.perf_counter() >= deadline:
                break
        return count, time.perf_counter() - t0, last_e


async def sim_state(rest: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{rest}/admin/state") as r:
        return dict(await r.json())


def run_speed(symbols: int, speed: float, seconds: float) -> dict[str, float]:
    proc, ws_base = start_sim(symbols, speed)
    try:
        names = [f"{s.lower()}@kline_1m" for s in _symbol_names(symbols)]
        url = f"{ws_base}/market/stream?streams=" + "/".join(names)
        c0, me0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
        w0 = time.perf_counter()
        count, window, last_e = asyncio.run(consume(url, seconds, warmup=1.0))
        cpu_s = cpu_seconds(proc.pid) - c0
        client_cpu = (cpu_seconds(os.getpid()) - me0) / (time.perf_counter() - w0) * 100
        cpu = cpu_s / (time.perf_counter() - w0) * 100
        st = asyncio.run(sim_state(ws_base.replace("ws://", "http://")))
        sent = st["counters"]["ws"]["frames_sent"]
        return {"speed": speed, "rate": count / window, "cpu": cpu, "client_cpu": client_cpu,
                "us_per_msg": cpu_s / max(sent, 1) * 1e6,
                "expected": symbols * 11 * speed / 60,
                "lag_s": (st["clock"]["nowMs"] - last_e) / 1000,
                "dropped": st["counters"]["ws"]["slow_consumer_drops"]}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _symbol_names(n: int) -> list[str]:
    from services.exchange_sim.__main__ import symbol_list

    return list(symbol_list(str(n)))


# ---- in-process: the driver against a naive encoder ---------------------------------------
INPROC_START = 1_699_999_980_000  # a whole minute; any fixed time gives a repeatable run


class _Sink:
    """A transport that counts and hashes what is written (the socket's bytes, no socket)."""

    def __init__(self) -> None:
        self.writes = 0
        self.size = 0
        self.digest = hashlib.blake2b(digest_size=16)

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.size += len(data)
        self.digest.update(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class _OpenWs:
    closed = False


def _paused_sim(symbols: int) -> Any:
    from services.exchange_sim.server import SimConfig, SimServer

    cfg = SimConfig(symbols=_symbol_names(symbols), paused=True, start_ms=INPROC_START,
                    history_minutes=5)  # fmt: skip
    return SimServer(cfg)


def inproc_fast(symbols: int, minutes: int) -> tuple[float, int, str]:
    """(CPU s, messages, digest): the simulator's own path, stepped 3 simulated s at a time
    (speed 1500 with the 2 ms driver tick), one combined socket on every kline stream."""
    from services.exchange_sim.wsconn import WsConn

    sim, sink = _paused_sim(symbols), _Sink()
    conn = WsConn(1, "market", "market", "/market/stream", _OpenWs(), sink, True, INPROC_START)
    sim.market_hub.subscribe(conn, list(sim.driver.kline_streams))
    sim.registry.add(conn)
    end = INPROC_START + minutes * 60_000 - 1
    c0 = time.process_time()
    for now in range(INPROC_START + 3000, end + 3000, 3000):
        sim.driver.step(min(now, end))
        sim.registry.flush_all()
    return time.process_time() - c0, sim.registry.counters["frames_sent"], sink.digest.hexdigest()


def inproc_naive(symbols: int, minutes: int) -> tuple[float, int, str]:
    """The same minutes the straightforward way (what the driver did before it was tuned,
    plus a dict + orjson per message and a write per message)."""
    from services.exchange_sim.klines import F, N
    from services.exchange_sim.market.bar import bar_updates
    from services.exchange_sim.wsconn import combined, frame_text

    sim, sink = _paused_sim(symbols), _Sink()
    d, market, ex = sim.driver, sim.market, sim.exchange
    syms, fmts, streams = d.symbols, d.fmt, d.kline_streams
    first = list(d._next_trade_id)  # what warm-up left: the ids of the first minute
    n = d.updates_per_minute - 1
    closing: list[tuple[Any, ...] | None] = [None] * len(syms)
    c0 = time.process_time()
    msgs = 0
    for m in range(minutes):
        t0 = INPROC_START + m * 60_000
        for i, row in enumerate(closing):  # last minute's candles close at t0
            if row is not None:
                k = fmts[i].k(row, True)
                msg = orjson.dumps({"e": "kline", "E": t0, "s": syms[i], "k": k})
                sink.write(frame_text(combined(streams[i], msg)))
                msgs += 1
                first[i] = int(row[F]) + int(row[N])
        events, bars = [], [market.bar(s, market.index_at(t0)) for s in syms]
        for i, bar in enumerate(bars):
            events += [(t0 + u.offset_ms, i, u) for u in bar_updates(bar, n)]
        events.sort(key=lambda e: (e[0], e[1]))
        tv, tq = [0.0] * len(syms), [0.0] * len(syms)
        for ts, i, u in events:
            bar = bars[i]
            if u.cum_volume >= bar.volume:
                tv[i], tq[i] = bar.taker_buy_volume, bar.taker_buy_quote_volume
            elif bar.volume:
                share = u.cum_volume / bar.volume
                tv[i] = bar.taker_buy_volume * share
                tq[i] = bar.taker_buy_quote_volume * share
            row = (t0, float(bar.open), u.high, u.low, u.price, u.cum_volume, u.cum_quote,
                   u.cum_trades, tv[i], tq[i], first[i])  # fmt: skip
            closing[i] = row
            ex.advance_price(syms[i], Decimal(fmts[i].p(u.price)), ts)
            msg = orjson.dumps({"e": "kline", "E": ts, "s": syms[i], "k": fmts[i].k(row, False)})
            sink.write(frame_text(combined(streams[i], msg)))
            msgs += 1
    return time.process_time() - c0, msgs, sink.digest.hexdigest()


def run_inproc(symbols: int, minutes: int, rounds: int) -> None:
    fast: list[float] = []
    naive: list[float] = []
    same = True
    for _ in range(rounds):  # alternated, so both see the same machine load
        f_cpu, f_n, f_hash = inproc_fast(symbols, minutes)
        n_cpu, n_n, n_hash = inproc_naive(symbols, minutes)
        same = same and f_hash == n_hash and f_n == n_n
        fast.append(f_cpu / f_n * 1e6)
        naive.append(n_cpu / n_n * 1e6)
    f_med, n_med = statistics.median(fast), statistics.median(naive)
    print(f"in-process, {symbols} symbols x {minutes} simulated minutes ({f_n:,} messages), "
          f"{rounds} alternated rounds; CPU us/msg median (min):")  # fmt: skip
    print(f"  simulator driver+encoder+write  {f_med:6.2f} ({min(fast):.2f})  "
          f"-> {1e6 / f_med:>9,.0f} msgs/s per core")  # fmt: skip
    print(f"  naive reference                 {n_med:6.2f} ({min(naive):.2f})  "
          f"-> {1e6 / n_med:>9,.0f} msgs/s per core   speed-up x{n_med / f_med:.1f}")  # fmt: skip
    print(f"  bytes identical: {'yes' if same else 'NO'}")


# ---- the reference server -----------------------------------------------------------------
async def _reference_server() -> None:
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        try:
            while not ws.closed:
                await ws.send_frame(SAMPLE, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)  # the parent reads the port from stdout
    await asyncio.Event().wait()


def run_reference(seconds: float) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--reference-server"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        c0 = cpu_seconds(proc.pid)
        w0 = time.perf_counter()
        count, window, _ = asyncio.run(consume(f"ws://127.0.0.1:{port}/", seconds, warmup=0.5))
        cpu_s = cpu_seconds(proc.pid) - c0
        cpu = cpu_s / (time.perf_counter() - w0) * 100
        # the tight loop sends faster than it is read: count what was read, not sent
        return {"rate": count / window, "cpu": cpu, "us_per_msg": cpu_s / count * 1e6}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--symbols", type=int, default=200)
    p.add_argument("--speeds", default="60,600,1500,3000,6000")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--inproc-minutes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reference-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_server:
        asyncio.run(_reference_server())
        return
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} (other work competes)")
    if args.inproc_minutes > 0:
        run_inproc(args.symbols, args.inproc_minutes, args.rounds)
    ref = run_reference(args.seconds)
    print(f"reference: naive aiohttp send_frame loop -> same client: {ref['rate']:,.0f} msgs/s "
          f"(server CPU {ref['cpu']:.0f}%, {ref['us_per_msg']:.1f} us/msg)")  # fmt: skip
    print(f"{'speed':>7} {'expected/s':>11} {'received/s':>11} {'of ref':>7} "
          f"{'server CPU':>10} {'us/msg':>7} {'1-core cap/s':>12} {'client CPU':>10} "
          f"{'lag (sim s)':>11} {'dropped':>8}")  # fmt: skip
    for speed in (float(s) for s in args.speeds.split(",")):
        r = run_speed(args.symbols, speed, args.seconds)
        print(f"{speed:>7.0f} {r['expected']:>11,.0f} {r['rate']:>11,.0f} "
              f"{r['rate'] / ref['rate']:>7.2f} {r['cpu']:>9.0f}% {r['us_per_msg']:>7.1f} "
              f"{1e6 / r['us_per_msg']:>12,.0f} {r['client_cpu']:>9.0f}% {r['lag_s']:>11.1f} "
              f"{r['dropped']:>8}")  # fmt: skip


if __name__ == "__main__":
    main()
