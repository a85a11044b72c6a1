"""`slt data download`: kline archives from Binance's public data site, checksum-verified.

    slt data download --symbols BTCUSDT ETHUSDT --months 2023-01..2023-06 --dest data/klines
    slt data download --symbols BTCUSDT --days 2024-03-01..2024-03-03 --dest data/klines

Layout (https://data.binance.vision, USD-M futures):
    data/futures/um/monthly/klines/<SYM>/<interval>/<SYM>-<interval>-YYYY-MM.zip
    data/futures/um/daily/klines/<SYM>/<interval>/<SYM>-<interval>-YYYY-MM-DD.zip
each with `<zip>.CHECKSUM` holding "<sha256 hex>  <zip name>".  A zip whose SHA-256 differs
is refused (nothing written); a verified zip's one CSV is written as
`<dest>/<SYM>-<interval>-<period>.csv` (atomically: temp file, then rename), the name the
backtest and the simulator's replay read.  A file already in `dest` is skipped unless
`--force`.  `--base-url` takes another mirror, or `file:///path` for a local copy of the
same tree (how the tests run it: they never touch the internet).

Exit status: 0 every file present or written, 1 some file missing (404) or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp

from services.exchange_sim.market.bar import INTERVALS_MS

DEFAULT_BASE_URL = "https://data.binance.vision"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
ATTEMPTS = 3


class DownloadError(Exception):
    """A file could not be fetched; `status` is the HTTP status when there was one."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url, self.reason, self.status = url, reason, status
        super().__init__(f"{url}: {reason}")


class NotFound(DownloadError):
    """The archive has no such file (a month not yet published, a symbol not listed)."""


class _Final(DownloadError):
    """A refusal that a retry will not change (403, 400...)."""


class ChecksumMismatch(DownloadError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(url, f"SHA-256 {actual} != published {expected}")


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    symbol: str
    interval: str
    period: str  # YYYY-MM (monthly) or YYYY-MM-DD (daily)

    @property
    def kind(self) -> str:
        return "monthly" if len(self.period) == 7 else "daily"

    @property
    def stem(self) -> str:
        return f"{self.symbol}-{self.interval}-{self.period}"

    def url(self, base: str) -> str:
        return (f"{base.rstrip('/')}/data/futures/um/{self.kind}/klines/{self.symbol}/"
                f"{self.interval}/{self.stem}.zip")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    file: ArchiveFile
    status: str  # written | exists | missing | failed
    path: Path | None = None
    error: str = ""


# ---- periods -----------------------------------------------------------------------------
def months(specs: Sequence[str]) -> list[str]:
    """'2023-01', '2023-01..2023-03' (inclusive) -> ['2023-01', '2023-02', '2023-03']."""
    out: list[str] = []
    for spec in specs:
        lo, _, hi = spec.partition("..")
        hi = hi or lo
        if not (_MONTH.match(lo) and _MONTH.match(hi)) or hi < lo:
            raise ValueError(f"bad month or range {spec!r}: use YYYY-MM or YYYY-MM..YYYY-MM")
        y, m = int(lo[:4]), int(lo[5:])
        while f"{y:04d}-{m:02d}" <= hi:
            out.append(f"{y:04d}-{m:02d}")
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return sorted(set(out))


def days(specs: Sequence[str]) -> list[str]:
    """'2024-03-01', '2024-03-01..2024-03-03' (inclusive) -> the days."""
    out: list[str] = []
    for spec in specs:
        lo, _, hi = spec.partition("..")
        try:
            a, b = date.fromisoformat(lo), date.fromisoformat(hi or lo)
        except ValueError:
            raise ValueError(f"bad day or range {spec!r}: use YYYY-MM-DD[..YYYY-MM-DD]") from None
        if b < a:
            raise ValueError(f"empty range {spec!r}")
        out += [(a + timedelta(n)).isoformat() for n in range((b - a).days + 1)]
    return sorted(set(out))


# ---- fetching ----------------------------------------------------------------------------
async def fetch(session: aiohttp.ClientSession | None, url: str) -> bytes:
    """The bytes at `url` (http(s) with retries on 5xx/network errors, or file://)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            return await asyncio.to_thread(Path(unquote(parsed.path)).read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(url, "no such file", 404) from None
        except OSError as exc:
            raise DownloadError(url, repr(exc)) from None
    if parsed.scheme not in ("http", "https") or session is None:
        raise DownloadError(url, f"unsupported URL scheme {parsed.scheme!r}")
    last = DownloadError(url, "no attempt made")
    for attempt in range(ATTEMPTS):
        try:
            async with session.get(url) as resp:
                if resp.status == 404:
                    raise NotFound(url, "not published", 404)
                if resp.status != 200 and resp.status < 500:
                    raise _Final(url, f"HTTP {resp.status}", resp.status)
                if resp.status != 200:
                    raise DownloadError(url, f"HTTP {resp.status}", resp.status)
                return await resp.read()
        except (NotFound, _Final):
            raise
        except (TimeoutError, DownloadError, aiohttp.ClientError) as exc:
            last = exc if isinstance(exc, DownloadError) else DownloadError(url, repr(exc))
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(0.2 * 2**attempt)
    raise last


def verify(url: str, payload: bytes, checksum_text: str) -> None:
    """Raise ChecksumMismatch unless sha256(payload) is the published digest."""
    fields = checksum_text.split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        raise DownloadError(url + ".CHECKSUM", "not a SHA-256 checksum file")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != fields[0].lower():
        raise ChecksumMismatch(url, fields[0].lower(), actual)


def extract_csv(url: str, payload: bytes) -> bytes:
    """The one CSV in a verified archive (its name is not trusted as a path)."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
            if len(names) != 1:
                raise DownloadError(url, f"expected one CSV in the zip, found {len(names)}")
            return zf.read(names[0])
    except zipfile.BadZipFile as exc:
        raise DownloadError(url, f"not a zip file: {exc}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def download_one(
    session: aiohttp.ClientSession | None, f: ArchiveFile, dest: Path, base_url: str,
    force: bool = False,
) -> Outcome:  # fmt: skip
    target = dest / f"{f.stem}.csv"
    if not force and await asyncio.to_thread(target.exists):
        return Outcome(f, "exists", target)
    url = f.url(base_url)
    try:
        payload, checksum = await asyncio.gather(
            fetch(session, url), fetch(session, url + ".CHECKSUM")
        )
        verify(url, payload, checksum.decode("ascii", "replace"))
        csv_bytes = extract_csv(url, payload)
    except NotFound as exc:
        return Outcome(f, "missing", None, str(exc))
    except DownloadError as exc:
        return Outcome(f, "failed", None, str(exc))
    await asyncio.to_thread(_write_atomic, target, csv_bytes)
    return Outcome(f, "written", target)


async def download(
    files: Sequence[ArchiveFile], dest: str | Path, base_url: str = DEFAULT_BASE_URL,
    force: bool = False, concurrency: int = 4, timeout_s: float = 120.0,
) -> list[Outcome]:  # fmt: skip
    """Fetch, verify and unpack `files` into `dest`, `concurrency` at a time."""
    sem = asyncio.Semaphore(max(1, concurrency))
    out_dir = Path(dest)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(f: ArchiveFile) -> Outcome:
            async with sem:
                return await download_one(session, f, out_dir, base_url, force)

        return list(await asyncio.gather(*(one(f) for f in files)))


# ---- command line ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slt data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    d = sub.add_parser("download", help="download kline archives into --dest")
    d.add_argument(
        "--symbols", nargs="+", required=True, help="e.g. BTCUSDT ETHUSDT (or comma list)"
    )
    when = d.add_mutually_exclusive_group(required=True)
    when.add_argument("--months", nargs="+", help="YYYY-MM or YYYY-MM..YYYY-MM (monthly archives)")
    when.add_argument("--days", nargs="+", help="YYYY-MM-DD or a range (daily archives)")
    d.add_argument("--dest", required=True, help="directory for the CSV files")
    d.add_argument("--interval", default="1m", choices=sorted(INTERVALS_MS, key=INTERVALS_MS.get))
    d.add_argument("--base-url", default=DEFAULT_BASE_URL, help="mirror, or file:///local/tree")
    d.add_argument("--force", action="store_true", help="download files already in --dest")
    d.add_argument("--concurrency", type=int, default=4)
    return p  # fmt: skip


def plan(symbols: Sequence[str], periods: Sequence[str], interval: str) -> list[ArchiveFile]:
    syms = sorted({p.strip().upper() for s in symbols for p in s.split(",") if p.strip()})
    bad = [s for s in syms if not _SYMBOL.match(s)]
    if bad or not syms:
        raise ValueError(f"bad symbol(s): {', '.join(bad) or '(none)'}")
    return [ArchiveFile(s, interval, p) for s in syms for p in periods]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        periods = months(args.months) if args.months else days(args.days)
        files = plan(args.symbols, periods, args.interval)
    except ValueError as exc:
        print(f"data: {exc}", file=sys.stderr)
        return 2
    outcomes = asyncio.run(download(files, args.dest, args.base_url, args.force, args.concurrency))
    for o in outcomes:
        line = f"{o.status:8} {o.file.stem}"
        print(line + (f"  {o.error}" if o.error else f"  -> {o.path}"))
    bad = [o for o in outcomes if o.status in ("missing", "failed")]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} files present in {args.dest}",
          file=sys.stderr)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
