"""A `DailyReport` as Markdown, HTML and an equity-curve PNG, written under
`<reports_dir>/<date>/`.

Only the report object is rendered: nothing here reads settings, the environment or
Redis, so no secret can reach a file by accident.  Every value that came from outside
(symbols, alert messages, model metrics) is escaped in HTML.  Files are written to a
temporary name and renamed, so a reader never sees half a report.  matplotlib is used
through `Figure` + the Agg canvas (no pyplot global state), so rendering is safe in a
worker thread.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.reporter.report import DAY_MS, DailyReport, TradeStats

MD_NAME = "report.md"
HTML_NAME = "report.html"
PNG_NAME = "equity.png"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    directory: Path
    markdown: Path
    html: Path
    png: Path


def money(v: Decimal | None, places: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:,.{places}f}"


def pct(v: Decimal | float | None) -> str:
    return "-" if v is None else f"{float(v) * 100:.1f}%"


def hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


def _stats_row(label: str, t: TradeStats) -> list[str]:
    return [
        label, str(t.count), pct(t.win_rate), money(t.avg_win), money(t.avg_loss),
        money(t.gross_pnl), money(t.fees), money(t.funding), money(t.net_pnl),
    ]  # fmt: skip


STATS_HEAD = [
    "symbol",
    "trades",
    "win rate",
    "avg win",
    "avg loss",
    "gross",
    "fees",
    "funding",
    "net",
]


def sections(r: DailyReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table; Markdown and HTML both render these, so the
    two never disagree."""
    t, eq, ex, f = r.trades, r.equity, r.exposure, r.feed
    pnl = [
        ["realized PnL (net)", money(r.realized_pnl)],
        ["unrealized PnL (open positions now)", money(r.unrealized_pnl)],
        ["gross PnL", money(t.gross_pnl)],
        ["fees", money(t.fees)],
        ["funding", money(t.funding)],
        ["opening equity", money(eq.start)],
        ["closing equity (realized)", money(eq.end)],
        ["max drawdown", money(eq.max_drawdown)],
        ["max drawdown %", pct(eq.max_drawdown_pct)],
    ]
    trades = [
        ["trades", str(t.count)],
        ["wins / losses", f"{t.wins} / {t.losses}"],
        ["win rate", pct(t.win_rate)],
        ["average win", money(t.avg_win)],
        ["average loss", money(t.avg_loss)],
        ["best / worst", f"{money(t.best)} / {money(t.worst)}"],
    ]
    symbols = [_stats_row(s.symbol, s.stats) for s in r.per_symbol]
    expo = [
        ["open positions", str(ex.open_positions)],
        ["open notional", money(ex.notional)],
        ["exposure (notional / equity)", "-" if ex.ratio is None else f"{ex.ratio:.2f}x"],
        ["max leverage of open positions", f"{ex.open_max_leverage:g}x"],
        ["max / average leverage of the day's trades",
         f"{ex.trade_max_leverage:g}x / {money(ex.trade_avg_leverage, 1)}x"],
    ]  # fmt: skip
    model = [["version", r.model.version if r.model else "(none)"]]
    if r.model:
        if r.model.trained_at:
            model.append(["trained at", r.model.trained_at])
        model += [[f"metric: {k}", _metric(v)] for k, v in sorted(r.model.metrics.items())]
    feed = [
        ["WebSocket reconnects", str(f.reconnects)],
        ["REST fallback activations", str(sum(f.rest_fallbacks.values()))],
        *[[f"  reason: {k}", str(v)] for k, v in sorted(f.rest_fallbacks.items())],
        ["listenKey renewals ok / failed", f"{f.renewals_ok} / {f.renewals_failed}"],
        ["listenKey renewal success rate", pct(f.renewal_success_rate)],
        ["bad messages dropped", str(f.bad_messages)],
    ]
    alerts = [[hhmm(a.time), a.state, a.severity, a.alert_id, a.message] for a in r.alerts]
    return [
        ("PnL", ["", "USDT"], pnl),
        ("Trades", ["", ""], trades),
        ("Per symbol", STATS_HEAD, symbols),
        ("Exposure and leverage", ["", ""], expo),
        ("Model", ["", ""], model),
        ("Feed health over the day", ["", ""], feed),
        ("Alerts", ["time (UTC)", "state", "severity", "id", "message"], alerts),
    ]


def _metric(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(r: DailyReport) -> str:
    lines = [f"# SelfLearningTrader daily report — {r.date} (UTC)", ""]
    lines.append(f"Generated at {datetime.fromtimestamp(r.generated_at / 1000, UTC).isoformat()}.")
    lines += ["", f"![equity curve]({PNG_NAME})", ""]
    for title, head, rows in sections(r):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}"""


def render_html(r: DailyReport) -> str:
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>SelfLearningTrader report {e(r.date)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Daily report — {e(r.date)} (UTC)</h1>",
        f"<img src='{PNG_NAME}' alt='equity curve' width='900'>",
    ]
    for title, head, rows in sections(r):
        out.append(f"<h2>{e(title)}</h2>")
        if not rows:
            out.append("<p>(none)</p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def render_png(r: DailyReport) -> bytes:
    """The realized equity curve of the day as a PNG (a flat line when no trades)."""
    import io

    from matplotlib.figure import Figure  # heavy import: only when a report is drawn

    pts = list(r.equity.points)
    day_end = pts[0][0] + DAY_MS if pts else r.generated_at
    if pts and min(day_end, r.generated_at) > pts[-1][0]:
        pts.append((min(day_end, r.generated_at), pts[-1][1]))  # hold the last level
    xs = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in pts]
    ys = [v for _, v in pts]
    fig = Figure(figsize=(9, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.step(xs, ys, where="post", color="#1f77b4", linewidth=1.5)
    ax.set_title(f"Realized equity {r.date} (UTC)")
    ax.set_ylabel("USDT" if r.equity.start is not None else "cumulative PnL, USDT")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(r: DailyReport, reports_dir: str | Path) -> ReportFiles:
    """Render all three outputs into `<reports_dir>/<date>/` (blocking: run it in a
    thread from async code)."""
    directory = Path(reports_dir) / r.date
    directory.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(directory, directory / MD_NAME, directory / HTML_NAME, directory / PNG_NAME)
    _atomic_write(files.png, render_png(r))
    _atomic_write(files.markdown, render_markdown(r).encode())
    _atomic_write(files.html, render_html(r).encode())
    return files
