"""Kline loading for the backtest (CSV with/without header, gz, klines JSON, real slices)
and `slt data download` against local archives (file:// and an aiohttp server on
127.0.0.1) - never the internet."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from backtest.data import CLOSE, HIGH, OPEN, DataError, find_files, load_feed, parse_time
from backtest.download import ArchiveFile, days, download, months
from services.exchange_sim.market.kline_cache import KlineCache
from shared.cli import main as slt_main
from shared.testing import KLINES_DIR

REAL = KLINES_DIR / "binance_usdtm_2023-02_vision_csv/AVAXUSDT-1m-2023-02.csv"
T0 = 1_675_209_600_000  # 2023-02-01T00:00Z
MIN = 60_000
HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
          "taker_buy_volume,taker_buy_quote_volume,ignore")  # fmt: skip


def rows(n: int, start: float = 100.0, t0: int = T0) -> list[list[str]]:
    out, p = [], start
    for i in range(n):
        o, c = p, p + (0.5 if i % 3 else -0.3)
        t = t0 + i * MIN
        out.append([str(t), f"{o:.2f}", f"{max(o, c) + 0.1:.2f}", f"{min(o, c) - 0.1:.2f}",
                    f"{c:.2f}", "12.5", str(t + MIN - 1), "1250.0", "42", "6.0", "600.0", "0"])  # fmt: skip
        p = c
    return out


def write_csv(path: Path, data: list[list[str]], header: bool = True) -> Path:
    text = "\n".join(([HEADER] if header else []) + [",".join(r) for r in data]) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_csv_json_gz_and_header_variants_load_to_one_grid(tmp_path: Path) -> None:
    a = rows(30)
    write_csv(tmp_path / "AAAUSDT-1m-2023-02.csv", a)  # header
    write_csv(tmp_path / "BBBUSDT-1m-2023-02.csv.gz", rows(30, 50.0), header=False)
    j = rows(20, 10.0, T0 + 10 * MIN)  # starts 10 minutes later
    (tmp_path / "CCCUSDT-1m.json").write_text(
        json.dumps([[int(r[0]), *r[1:6], int(r[6]), *r[7:]] for r in j])
    )
    write_csv(tmp_path / "AAAUSDT-5m-2023-02.csv", rows(5))  # another interval: left out
    feed = load_feed([tmp_path])
    assert feed.symbols == ("AAAUSDT", "BBBUSDT", "CCCUSDT")
    assert len(feed) == 30 and feed.interval_ms == MIN and int(feed.times[0]) == T0
    assert feed.cube.shape == (30, 3, 9)
    assert feed.cube[0, 0, OPEN] == float(a[0][1]) and feed.cube[29, 0, CLOSE] == float(a[29][4])
    assert np.isnan(feed.cube[:10, 2, OPEN]).all() and not np.isnan(feed.cube[10:, 2, OPEN]).any()
    assert feed.cube[10, 2, HIGH] == float(j[0][2])
    hist = feed.history(12)
    assert len(hist["AAAUSDT"]) == 12 and len(hist["CCCUSDT"]) == 2
    assert hist["CCCUSDT"].open_time.tolist() == [T0 + 10 * MIN, T0 + 11 * MIN]
    assert [p.name for p in find_files([tmp_path])] == [
        "AAAUSDT-1m-2023-02.csv", "BBBUSDT-1m-2023-02.csv.gz", "CCCUSDT-1m.json"]  # fmt: skip


def test_window_symbols_and_bad_bars(tmp_path: Path) -> None:
    data = rows(40)
    data[5][3] = "1000.0"  # low above high: not a real bar
    data[6][5] = "-1"  # negative volume
    write_csv(tmp_path / "AAAUSDT-1m-2023-02.csv", data)
    write_csv(tmp_path / "BBBUSDT-1m-2023-02.csv", rows(40, 7.0))
    feed = load_feed(
        [tmp_path], symbols=["aaausdt"], start=str(T0 + 2 * MIN), end=str(T0 + 30 * MIN)
    )
    assert feed.symbols == ("AAAUSDT",) and feed.dropped == {"AAAUSDT": 2}
    assert int(feed.times[0]) == T0 + 2 * MIN and int(feed.times[-1]) == T0 + 29 * MIN
    assert len(feed) == 26  # 28 minutes, two bars dropped (no other symbol has them)
    with pytest.raises(DataError, match="no data for ZZZUSDT"):
        load_feed([tmp_path], symbols=["ZZZUSDT"])
    with pytest.raises(DataError):
        load_feed([tmp_path / "missing"])
    with pytest.raises(DataError, match="not after"):
        load_feed([tmp_path], start="2023-02-02", end="2023-02-01")
    assert parse_time("2023-02-01") == T0 and parse_time("2023-02-01T00:01") == T0 + MIN


def test_slice_of_the_real_binance_csv(tmp_path: Path) -> None:
    lines = REAL.read_text().splitlines()[:301]  # header + the first 300 minutes
    (tmp_path / "AVAXUSDT-1m-2023-02.csv").write_text("\n".join(lines) + "\n")
    feed = load_feed([tmp_path])
    first = lines[1].split(",")
    assert (
        feed.symbols == ("AVAXUSDT",) and len(feed) == 300 and int(feed.times[0]) == int(first[0])
    )
    assert feed.cube[0, 0, :4].tolist() == [float(x) for x in first[1:5]]
    assert feed.specs["AVAXUSDT"].tick_size == __import__("decimal").Decimal("0.001")
    assert not feed.estimated  # the vision CSV has every column
    whole = load_feed([REAL], start="2023-02-10", end="2023-02-11")
    assert len(whole) == 1440 and int(whole.times[0]) == T0 + 9 * 1440 * MIN


def test_cube_matches_a_bar_by_bar_build(tmp_path: Path) -> None:
    """The vectorized cube equals the obvious per-bar construction: symbols starting late,
    ending early, with a hole (missing rows) and dropped bad bars, inside a window."""
    gap = rows(60)
    del gap[20:25]  # five minutes missing
    gap[40][3] = "1e9"  # low above high: dropped
    write_csv(tmp_path / "AAAUSDT-1m-2023-02.csv", gap)
    write_csv(tmp_path / "BBBUSDT-1m-2023-02.csv", rows(30, 50.0, T0 + 10 * MIN))  # late, short
    write_csv(tmp_path / "CCCUSDT-1m-2023-02.csv", rows(70, 9.0, T0 - 5 * MIN))  # early, long
    feed = load_feed([tmp_path], start=str(T0), end=str(T0 + 65 * MIN))
    files = {s: [r for r in d if T0 <= int(r[0]) < T0 + 65 * MIN] for s, d in
             (("AAAUSDT", gap), ("BBBUSDT", rows(30, 50.0, T0 + 10 * MIN)),
              ("CCCUSDT", rows(70, 9.0, T0 - 5 * MIN)))}  # fmt: skip
    times = sorted({int(r[0]) for d in files.values() for r in d})
    expect = np.full((len(times), 3, 9), np.nan)
    for j, s in enumerate(feed.symbols):
        for r in files[s]:
            if r is not gap[40]:
                expect[times.index(int(r[0])), j] = [float(x) for x in (*r[1:6], *r[7:11])]
    assert feed.times.tolist() == times and feed.dropped == {"AAAUSDT": 1}
    assert np.array_equal(feed.cube, expect, equal_nan=True)


def test_load_feed_through_the_cache(tmp_path: Path) -> None:
    write_csv(tmp_path / "AAAUSDT-1m-2023-02.csv.gz", rows(50))
    write_csv(tmp_path / "BBBUSDT-1m-2023-02.csv", rows(40, 5.0), header=False)
    plain = load_feed([tmp_path])
    cache = KlineCache(tmp_path / "cache")  # a test never writes into the repository's var/
    for _ in range(2):
        cached = load_feed([tmp_path], cache=cache)
        assert np.array_equal(cached.cube, plain.cube, equal_nan=True)
        assert cached.specs == plain.specs and cached.times.tolist() == plain.times.tolist()
    assert (cache.misses, cache.hits, cache.writes) == (2, 2, 2)


# ---- slt data download ----------------------------------------------------------------
def archive(
    root: Path, symbol: str, period: str, csv_text: str, bad_checksum: bool = False
) -> bytes:
    f = ArchiveFile(symbol, "1m", period)
    d = root / "data/futures/um" / f.kind / "klines" / symbol / "1m"
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{f.stem}.csv", csv_text)
    payload = buf.getvalue()
    (d / f"{f.stem}.zip").write_bytes(payload)
    digest = "0" * 64 if bad_checksum else hashlib.sha256(payload).hexdigest()
    (d / f"{f.stem}.zip.CHECKSUM").write_text(f"{digest}  {f.stem}.zip\n")
    return payload


def test_periods() -> None:
    assert months(["2022-11..2023-02", "2023-01"]) == ["2022-11", "2022-12", "2023-01", "2023-02"]
    assert days(["2024-02-28..2024-03-01"]) == ["2024-02-28", "2024-02-29", "2024-03-01"]
    for bad in (["2023-13"], ["2023-03..2023-01"], ["23-01"]):
        with pytest.raises(ValueError):
            months(bad)


def test_download_from_file_url_verifies_checksums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "mirror"
    text = "\n".join([HEADER] + [",".join(r) for r in rows(10)]) + "\n"
    archive(src, "BTCUSDT", "2023-01", text)
    archive(src, "BTCUSDT", "2023-02", text, bad_checksum=True)
    dest = tmp_path / "klines"
    argv = ["data", "download", "--symbols", "btcusdt", "--months", "2023-01..2023-03",
            "--dest", str(dest), "--base-url", src.as_uri()]  # fmt: skip
    assert slt_main(argv) == 1  # February fails its checksum, March is not published
    out = capsys.readouterr().out
    assert "written  BTCUSDT-1m-2023-01" in out and "failed   BTCUSDT-1m-2023-02" in out
    assert "missing  BTCUSDT-1m-2023-03" in out and "SHA-256" in out
    assert (dest / "BTCUSDT-1m-2023-01.csv").read_text() == text
    assert not (dest / "BTCUSDT-1m-2023-02.csv").exists()  # refused: nothing written
    assert sorted(p.name for p in dest.iterdir()) == ["BTCUSDT-1m-2023-01.csv"]  # no temp files
    assert slt_main(argv[:5] + ["2023-01"] + argv[6:]) == 0  # already there: skipped
    assert "exists   BTCUSDT-1m-2023-01" in capsys.readouterr().out
    assert load_feed([dest]).symbols == ("BTCUSDT",)  # what it wrote, the backtest reads
    assert slt_main(["data", "download", "--symbols", "BTC/USDT", "--months", "2023-01",
                     "--dest", str(dest)]) == 2  # fmt: skip


async def test_download_over_http_from_a_local_server_with_a_retry(tmp_path: Path) -> None:
    src = tmp_path / "mirror"
    text = "\n".join(",".join(r) for r in rows(5)) + "\n"
    archive(src, "ETHUSDT", "2024-03-01", text)
    hits: dict[str, int] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["tail"]
        hits[name] = hits.get(name, 0) + 1
        if name.endswith(".zip") and hits[name] == 1:
            return web.Response(status=503)  # transient: the client retries
        path = src / name
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes())

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        files = [
            ArchiveFile("ETHUSDT", "1m", "2024-03-01"),
            ArchiveFile("ETHUSDT", "1m", "2024-03-02"),
        ]
        out = await download(files, tmp_path / "dest", f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert [o.status for o in out] == ["written", "missing"]
    assert (tmp_path / "dest" / "ETHUSDT-1m-2024-03-01.csv").read_text() == text
    zip_path = "data/futures/um/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2024-03-01.zip"
    assert hits[zip_path] == 2
