"""`slt backtest` end to end on a slice of the real klines: files written, comparison
printed, usage errors reported; the progress bar only on a terminal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from backtest.cli import _progress
from shared.cli import main as slt_main
from shared.testing import KLINES_DIR

DATA = str((KLINES_DIR / "binance_usdtm_2023-07_freqtrade/csv").resolve())  # tests chdir


@pytest.fixture
def quick_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small model so the learner-on run trains in well under a second."""
    monkeypatch.setenv("SLT_MODEL__N_ESTIMATORS", "20")
    monkeypatch.setenv("SLT_MODEL__MIN_TRAIN_SAMPLES", "100")


def test_slt_backtest_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], quick_model: None
) -> None:
    out, cache = tmp_path / "bt", tmp_path / "kline-cache"
    code = slt_main(["backtest", "--data", DATA, "--symbols", "DOGEUSDT,SOLUSDT", "XRPUSDT",
                     "--start", "2023-07-18T12:00", "--end", "2023-07-21T00:00",
                     "--cold-start-days", "1.5", "--out", str(out), "--equity", "20000",
                     "--seed", "7", "--cache-dir", str(cache)])  # fmt: skip
    assert code == 0
    assert sorted(p.name.split(".")[0] for p in cache.iterdir()) == [
        "DOGEUSDT-1m", "SOLUSDT-1m", "XRPUSDT-1m"]  # parsed files kept for the next run  # fmt: skip
    printed = capsys.readouterr()
    for word in ("Backtest comparison", "learner_on", "learner_off", "buy_and_hold",
                 "Sharpe (daily)", "max drawdown", "profit factor"):  # fmt: skip
        assert word in printed.out
    assert "bars/s" in printed.err and "%" not in printed.err.split("\n")[0]  # no progress bar
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["runs"]) == {"learner_on", "learner_off", "buy_and_hold"}
    assert doc["data"]["symbols"] == ["DOGEUSDT", "SOLUSDT", "XRPUSDT"]
    assert doc["config"]["equity"] == "20000" and doc["config"]["seed"] == 7
    off = doc["runs"]["learner_off"]
    for key in ("total_return", "annualized_return", "sharpe", "sortino", "max_drawdown",
                "win_rate", "profit_factor", "trades", "fees", "funding", "time_in_market",
                "avg_exposure", "avg_leverage"):  # fmt: skip
        assert key in off["metrics"]
    assert off["metrics"]["initial_equity"] == 20000
    assert (
        off["learning"] == [] and doc["runs"]["learner_on"]["learning"][0]["event"] == "cold_start"
    )
    assert float(off["engine"]["fees"]) == pytest.approx(off["metrics"]["fees"])
    with (out / "trades.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["run"] for r in rows} <= {"learner_on", "learner_off"}
    mine = [r for r in rows if r["run"] == "learner_off"]
    assert len(mine) == off["metrics"]["trades"]
    assert sum(float(r["net_pnl"]) for r in mine) == pytest.approx(off["metrics"]["net_pnl"])


def test_slt_backtest_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default cache dir is relative: var/cache/klines
    assert slt_main(["backtest", "--data", str(tmp_path / "nothing")]) == 2
    assert "backtest:" in capsys.readouterr().err
    args = ["backtest", "--data", DATA, "--symbols", "BTCUSDT", "--start", "2023-07-20",
            "--end", "2023-07-21", "--cold-start-days", "5", "--learner", "off",
            "--out", str(tmp_path)]  # fmt: skip
    assert slt_main([*args, "--no-cache"]) == 2
    assert "leaves no bars" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()  # --no-cache keeps nothing
    assert slt_main(args) == 2
    assert [p.name[:10] for p in (tmp_path / "var/cache/klines").iterdir()] == ["BTCUSDT-1m"]
    with pytest.raises(SystemExit):
        slt_main(["backtest", "--data", DATA, "--learner", "maybe"])


def test_progress_bar_only_on_a_terminal() -> None:
    bar, factory = _progress(Console(file=io.StringIO(), force_terminal=True), True)
    assert bar is not None and factory is not None
    update = factory("learner_on")
    update(50, 100)
    assert bar.tasks[0].completed == 50 and bar.tasks[0].total == 100
    assert _progress(Console(file=io.StringIO(), force_terminal=False), True) == (None, None)
    assert _progress(Console(file=io.StringIO(), force_terminal=True), False) == (None, None)
