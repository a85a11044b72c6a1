// Live dashboard: one EventSource on /api/events; every `snapshot` event redraws the page.
// Plain DOM, no framework. Every value from the server is set with textContent (never
// innerHTML), so a symbol or an alert message cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);

function fmtTime(ms) {
  return ms ? new Date(Number(ms)).toISOString().replace("T", " ").slice(0, 19) : "-";
}

function fmtNum(v, places = 2) {
  if (v === null || v === undefined || v === "") return "-";
  const n = Number(v);
  return Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: places, minimumFractionDigits: places }) : String(v);
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillTable(id, rows, emptyText) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(emptyText || "(none)", "muted");
    td.colSpan = $(id).querySelectorAll("th").length;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const c of row) tr.appendChild(Array.isArray(c) ? cell(c[0], c[1]) : cell(c));
    body.appendChild(tr);
  }
}

function pnlClass(v) {
  const n = Number(v);
  return "num " + (n > 0 ? "pos" : n < 0 ? "neg" : "");
}

function renderStatus(status) {
  $("overall").textContent = status.overall.toUpperCase();
  $("overall").className = "badge " + status.overall;
  $("halted").hidden = !status.halted;
  fillTable("services", status.services.map((s) => [
    s.name,
    [s.status, s.status + "-text"],
    s.age_s === null ? "-" : s.age_s.toFixed(1) + " s",
    s.phase || "-",
    s.reason || "",
  ]));
  const kl = status.feeds.kline_feed, ac = status.feeds.account_feed;
  $("feeds").textContent =
    `klines: ${kl.connected ? "connected" : "NOT connected"}, ${kl.symbols} symbols, last update ${kl.last_update || "-"}` +
    ` · account: ${ac.connected ? "connected" : "NOT connected"}, listenKey ${ac.listen_key_valid ? "valid" : "not valid"},` +
    ` last renewal ${ac.last_renewal || "-"}`;
  fillTable("connections", status.connections.map((c) => {
    const details = Object.entries(c).filter(([k]) => k !== "service" && k !== "id").map(([k, v]) => `${k}=${v}`).join(" ");
    return [c.service, c.id, details];
  }), "(no per-connection stats)");
}

function renderPositions(positions) {
  fillTable("positions", positions.map((p) => [
    p.symbol, p.side, fmtNum(p.size, 4), fmtNum(p.entry_price, 4), fmtNum(p.mark_price, 4),
    [fmtNum(p.unrealized_pnl), pnlClass(p.unrealized_pnl)], p.leverage ? p.leverage + "x" : "-",
  ]), "(no open positions)");
}

function renderEvents(signals, trades) {
  fillTable("signals", signals.map((e) => {
    const d = e.data || {};
    const bits = ["side", "confidence", "expected_value", "score"].filter((k) => k in d).map((k) => `${k}=${typeof d[k] === "number" ? d[k].toFixed(3) : d[k]}`);
    return [fmtTime(e.event_time), e.symbol || d.symbol || "-", e.type, bits.join(" ")];
  }));
  fillTable("trades", trades.map((e) => {
    const d = e.data && e.data.trade ? e.data.trade : (e.data || {});
    return [fmtTime(d.exit_time || e.event_time), d.symbol || e.symbol || "-", d.side || "-",
      [fmtNum(d.net_pnl), pnlClass(d.net_pnl)], d.exit_reason || "-"];
  }));
}

function renderAlerts(alerts) {
  fillTable("alerts", alerts.active.map((a) => [a.alert_id, a.severity, a.message, fmtTime(a.time)]), "(no active alerts)");
}

function renderEquity(eq) {
  $("equity-day").textContent = eq.day ? `(${eq.day} UTC)` : "";
  $("equity-info").textContent = `${eq.trades || 0} trades · max drawdown ${fmtNum(eq.max_drawdown)} USDT` +
    (eq.start === null || eq.start === undefined ? " · opening equity unknown: cumulative PnL" : "");
  const canvas = $("equity"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const pts = eq.points || [];
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
  const pad = 24, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const px = (x) => pad + ((x - x0) / (x1 - x0)) * w, py = (y) => pad + h - ((y - y0) / (y1 - y0)) * h;
  ctx.strokeStyle = "#1f77b4"; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach((p, i) => {
    if (i === 0) ctx.moveTo(px(p[0]), py(p[1]));
    else { ctx.lineTo(px(p[0]), py(pts[i - 1][1])); ctx.lineTo(px(p[0]), py(p[1])); }
  });
  ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "12px system-ui";
  ctx.fillText(fmtNum(y1), 2, pad - 6); ctx.fillText(fmtNum(y0), 2, canvas.height - 4);
}

function render(snap) {
  if (!snap || !snap.status) return;
  renderStatus(snap.status);
  renderPositions(snap.positions || []);
  renderEquity(snap.equity || {});
  renderAlerts(snap.alerts || { active: [] });
  renderEvents(snap.signals || [], snap.trades || []);
  $("live").textContent = "live · updated " + fmtTime(snap.now);
  document.body.dataset.version = String(Number(document.body.dataset.version || 0) + 1);
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (ev) => render(JSON.parse(ev.data)));
  source.onerror = () => { $("live").textContent = "disconnected, retrying…"; };
}

fetch("/api/dashboard", { credentials: "same-origin" })
  .then((r) => (r.ok ? r.json() : null))
  .then(render)
  .catch(() => {})
  .finally(connect);
