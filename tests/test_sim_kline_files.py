"""Reading kline files: numpy's fast reading gives bit-identical columns to the exact one
(every field through Python's float) on the real files and on every variant a file can
take, declines what it cannot vouch for, and bad files fail with the path and the reason;
the parsed-file cache returns the same data, re-reads a changed file and never trusts a
damaged entry."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.exchange_sim.market import ReplayFormatError, load_file
from services.exchange_sim.market import replay as replay_mod
from services.exchange_sim.market.fast_parse import fast_csv, fast_json
from services.exchange_sim.market.kline_cache import KlineCache
from services.exchange_sim.market.replay import SymbolData
from shared.testing import KLINES_DIR

VISION = KLINES_DIR / "binance_usdtm_2023-02_vision_csv"
FREQTRADE = KLINES_DIR / "binance_usdtm_2023-07_freqtrade" / "csv"
REAL = [VISION / "AVAXUSDT-1m-2023-02.csv", FREQTRADE / "BTCUSDT-1m.csv.gz",
        FREQTRADE / "ETHUSDT-5m.csv.gz"]  # fmt: skip
LINK = [line.split(",") for line in (VISION / "LINKUSDT-1m-2023-02.csv").read_text().splitlines()]
HEADER, ROWS = ",".join(LINK[0]), LINK[1:301]


def exact(path: Path, monkeypatch: pytest.MonkeyPatch) -> SymbolData:
    """The file through the exact (Python) reading only."""
    with monkeypatch.context() as m:
        m.setattr(replay_mod, "fast_csv", lambda raw: None)
        m.setattr(replay_mod, "fast_json", lambda raw: None)
        return load_file(path)


def assert_same(a: SymbolData, b: SymbolData) -> None:
    assert (a.symbol, a.interval_ms, a.spec, a.estimated) == (
        b.symbol, b.interval_ms, b.spec, b.estimated)  # fmt: skip
    assert list(a.cols) == list(b.cols)
    for k in a.cols:
        assert a.cols[k].dtype == b.cols[k].dtype, k
        assert a.cols[k].tobytes() == b.cols[k].tobytes(), k  # bit for bit, NaN included


def write(path: Path, lines: list[str], eol: str = "\n", trailing: bool = True) -> Path:
    text = eol.join(lines) + (eol if trailing else "")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_bytes(text.encode())
    return path


def rows(edit: Callable[[list[str]], list[str]] = list) -> list[str]:
    """The 300 LINK rows as CSV lines, each row's fields passed through `edit`."""
    return [",".join(edit(list(r))) for r in ROWS]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_files_fast_equals_exact(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = path.read_bytes()
    assert fast_csv(gzip.decompress(raw) if path.suffix == ".gz" else raw) is not None
    assert_same(load_file(path), exact(path, monkeypatch))


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def api_row(r: list[str]) -> list[object]:
    """A CSV row as /fapi/v1/klines prints it: times and trades as numbers, the rest strings."""
    return [int(r[0]), *r[1:6], int(r[6]), r[7], int(r[8]), r[9], r[10], "0"]


def number_row(r: list[str]) -> list[object]:
    return [int(r[0]), *map(float, r[1:6]), int(r[6]), float(r[7]), int(r[8]), *map(float, r[9:11])]


CSV, GZ, JSONF = "LINKUSDT-1m.csv", "LINKUSDT-1m.csv.gz", "LINKUSDT-1m.json"
VARIANTS: dict[str, Callable[[Path], Path]] = {
    "header": lambda d: write(d / CSV, [HEADER, *rows()]),
    "no_header_gz": lambda d: write(d / GZ, rows()),
    "crlf": lambda d: write(d / CSV, [HEADER, *rows()], eol="\r\n"),
    "no_final_newline": lambda d: write(d / CSV, rows(), trailing=False),
    "blank_line": lambda d: write(d / CSV, [*rows()[:9], "", *rows()[9:]]),
    "microseconds": lambda d: write(d / CSV, rows(lambda r: [r[0] + "000", *r[1:6], r[6] + "999", *r[7:]])),
    "unsorted_duplicates": lambda d: write(d / "LINKUSDT.csv", rows()[150:] + rows()[:160]),
    "freqtrade_empties": lambda d: write(d / GZ, [HEADER, *rows(lambda r: [*r[:7], *[""] * 5])]),
    "empties_then_ignore_0": lambda d: write(d / CSV, rows(lambda r: [*r[:7], *[""] * 4, "0"])),
    "six_columns": lambda d: write(d / CSV, rows(lambda r: r[:6])),
    "seven_columns": lambda d: write(d / CSV, rows(lambda r: r[:7])),
    "thirteen_columns": lambda d: write(d / CSV, rows(lambda r: [*r, "7"])),
    "one_long_row": lambda d: write(d / CSV, [rows()[0] + ",9", *rows()[1:]]),
    "spaces": lambda d: write(d / CSV, rows(lambda r: [r[0], f" {r[1]} ", *r[2:]])),
    "json_binance": lambda d: write_json(d / JSONF, [api_row(r) for r in ROWS]),
    "json_numbers": lambda d: write_json(d / JSONF, [number_row(r) for r in ROWS]),
    "json_six_columns": lambda d: write_json(d / JSONF, [api_row(r)[:6] for r in ROWS]),
}  # fmt: skip
DECLINED = {"blank_line", "empties_then_ignore_0", "one_long_row", "json_six_columns"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_fast_equals_exact(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = VARIANTS[variant](tmp_path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    parsed = fast_json(raw) if path.suffix == ".json" else fast_csv(raw)
    assert (parsed is None) == (variant in DECLINED)  # the fast reading is really exercised
    fast = load_file(path)
    assert_same(fast, exact(path, monkeypatch))
    assert len(fast) == 300 and fast.cols["open_time"][0] == int(ROWS[0][0])
    assert fast.estimated == (variant in ("freqtrade_empties", "empties_then_ignore_0",
                                          "six_columns", "seven_columns", "json_six_columns"))  # fmt: skip


def raw_file(name: str, data: bytes) -> Callable[[Path], Path]:
    return lambda d: (d / name).write_bytes(data) and d / name


X = "XUSDT-1m.csv"
EMPTY_AUX = [*[""] * 5]
BAD: dict[str, tuple[Callable[[Path], Path], str]] = {  # name -> (file, words of the reason)
    "aux_later_filled": (lambda d: write(d / X, [",".join([*ROWS[0][:7], *EMPTY_AUX]), *rows()[1:]]), "column 7"),
    "aux_later_empty": (lambda d: write(d / X, [*rows()[:5], ",".join([*ROWS[5][:7], *EMPTY_AUX]), *rows()[6:]]), "column 7"),
    "bad_token": (lambda d: write(d / X, [*rows()[:3], ",".join([ROWS[3][0], "oops", *ROWS[3][2:]]), *rows()[4:]]), "column 1"),
    "short_row": (lambda d: write(d / X, [*rows()[:3], ",".join(ROWS[3][:4]), *rows()[4:]]), "column 4"),
    "header_only": (lambda d: write(d / X, [HEADER]), "no klines"),
    "no_volume": (lambda d: write(d / X, rows(lambda r: r[:5])), "required"),
    "bad_gzip": (raw_file("XUSDT-1m.csv.gz", b"\x1f\x8bnot gzip"), "gzip"),
    "not_utf8": (raw_file(X, b"\xff\xfe1,2\n"), "UTF-8"),
    "json_null": (lambda d: write_json(d / "XUSDT-1m.json", [[1, "1", "2", "0.5", "1", None, 2]]), "column 5"),
    "json_not_list": (raw_file("XUSDT-1m.json", b'{"a": 1}'), "list of kline arrays"),
    "json_broken": (raw_file("XUSDT-1m.json", b"[[1, 2"), "bad JSON"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_name_the_path_and_reason(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, words = BAD[name]
    path = make(tmp_path)
    with pytest.raises(ReplayFormatError) as fast:
        load_file(path)
    with pytest.raises(ReplayFormatError) as slow:
        exact(path, monkeypatch)
    assert fast.value.path == str(path) and words in fast.value.reason
    assert fast.value.reason == slow.value.reason


# ------------------------------------------------------------------------------------ cache
def test_cache_returns_what_parsing_returns(tmp_path: Path) -> None:
    cache = KlineCache(tmp_path / "cache")
    files = [VARIANTS["freqtrade_empties"](tmp_path), VARIANTS["json_binance"](tmp_path),
             VARIANTS["microseconds"](tmp_path)]  # fmt: skip
    for path in files:
        truth = load_file(path)
        assert_same(load_file(path, cache), truth)  # miss: parsed, written
        assert_same(load_file(path, cache), truth)  # hit
    assert (cache.misses, cache.hits, cache.writes) == (3, 3, 3)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".npz"] * 3  # no temps


def test_cache_rereads_a_changed_file(tmp_path: Path) -> None:
    cache = KlineCache(tmp_path / "cache")
    path = write(tmp_path / "LINKUSDT-1m.csv", rows())
    first = load_file(path, cache)
    st = path.stat()
    # same size, new closes, mtime put back: still the old entry - size and mtime are the
    # key, as for make or rsync (a tool that restores mtimes must also change the size)...
    write(path, rows(lambda r: [*r[:4], r[4].replace("7", "8"), *r[5:]]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert_same(load_file(path, cache), first)
    # ...a new mtime makes it stale: parsed again, the entry replaced
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = load_file(path, cache)
    assert not np.array_equal(second.cols["c"], first.cols["c"])
    assert_same(second, load_file(path))
    write(path, rows()[:200])  # a new size too
    assert len(load_file(path, cache)) == 200
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one entry per source path


def _entry_with(cache: KlineCache, path: Path, **changes: object) -> None:
    """Rewrite `path`'s entry with some columns or meta replaced (a valid zip)."""
    with np.load(cache.entry(path)) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    for k, v in changes.items():
        if k == "meta":
            meta = v(meta)  # type: ignore[operator]
        elif v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(cache.entry(path), **arrays)


CORRUPT = {
    "truncated": lambda c, p: c.entry(p).write_bytes(c.entry(p).read_bytes()[:5000]),
    "flipped_byte": lambda c, p: c.entry(p).write_bytes(
        (lambda b: b[:20000] + bytes([b[20000] ^ 0xFF]) + b[20001:])(c.entry(p).read_bytes())
    ),
    "garbage": lambda c, p: c.entry(p).write_bytes(b"not a cache entry"),
    "empty": lambda c, p: c.entry(p).write_bytes(b""),
    "missing_column": lambda c, p: _entry_with(c, p, tq=None),
    "wrong_dtype": lambda c, p: _entry_with(c, p, n=np.zeros(300)),
    "short_column": lambda c, p: _entry_with(c, p, h=np.zeros(299)),
    "unsorted": lambda c, p: _entry_with(c, p, open_time=np.arange(300, dtype=np.int64)[::-1]),
    "other_source": lambda c, p: _entry_with(
        c, p, meta=lambda m: {**m, "identity": {**m["identity"], "path": "/elsewhere"}}
    ),
    "bad_spec": lambda c, p: _entry_with(
        c, p, meta=lambda m: {**m, "data": {**m["data"], "spec": [2, "x", "1"]}}
    ),
    "meta_not_dict": lambda c, p: _entry_with(c, p, meta=lambda m: [1, 2]),
}


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_a_damaged_entry_is_ignored_and_rewritten(damage: str, tmp_path: Path) -> None:
    path = write(tmp_path / "LINKUSDT-1m.csv", [HEADER, *rows()])
    truth = load_file(path)
    cache = KlineCache(tmp_path / "cache")
    load_file(path, cache)
    CORRUPT[damage](cache, path)
    assert_same(load_file(path, cache), truth)
    assert cache.writes == 2  # written again...
    hits = cache.hits
    assert_same(load_file(path, cache), truth)
    assert cache.hits == hits + 1  # ...and good again


def test_an_unwritable_cache_is_no_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = KlineCache(blocker / "cache")  # cannot mkdir below a file
    path = write(tmp_path / "LINKUSDT-1m.csv", rows())
    assert_same(load_file(path, cache), load_file(path))
    assert cache.writes == 0 and not cache.put(path, load_file(path).cols, {})
