"""Leverage brackets read from the simulator over REST, and the two questions a sizer asks
of them, checked against the exchange's own -2027 rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D

import pytest

from services.exchange_sim.server import SimConfig, SimServer
from shared.binance.client import BinanceClient
from shared.binance.errors import ExchangeError
from shared.brackets import Bracket, max_leverage_for, max_notional_at, parse_leverage_brackets
from shared.errors import MessageError
from shared.filters import parse_exchange_info

ALT = "XRPUSDT"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimConfig(symbols=("BTCUSDT", ALT), history_minutes=5)) as server:
        yield server


def tiers() -> tuple[Bracket, ...]:
    rows = [(0, 10_000, 50), (10_000, 50_000, 25), (50_000, 250_000, 20)]
    return tuple(Bracket(D(f), D(c), lev, D("0.01"), D(0)) for f, c, lev in rows)


def test_leverage_for_a_notional_and_notional_at_a_leverage() -> None:
    b = tiers()
    assert max_leverage_for(b, D(10_000)) == 50  # the cap itself is inside the tier
    assert max_leverage_for(b, D("10000.01")) == 25
    assert max_leverage_for(b, D(250_001)) == 0  # beyond every tier
    assert max_leverage_for((), D(1)) is None
    assert max_notional_at(b, 50) == D(10_000) and max_notional_at(b, 21) == D(50_000)
    assert max_notional_at(b, 20) == D(250_000) and max_notional_at(b, 51) is None


def test_malformed_answers_are_message_errors() -> None:
    with pytest.raises(MessageError):
        parse_leverage_brackets([{"symbol": "X", "brackets": [{"notionalCap": 1}]}])
    with pytest.raises(MessageError):
        parse_leverage_brackets("nope")


async def test_brackets_over_rest_match_the_exchanges_2027_rule(sim: SimServer) -> None:
    async with BinanceClient.from_credentials(sim.rest_url, sim.demo_key, sim.demo_secret) as c:
        every = parse_leverage_brackets(await c.leverage_brackets())
        one = parse_leverage_brackets(await c.leverage_brackets(ALT))
        assert set(every) == {"BTCUSDT", ALT} and one[ALT] == every[ALT]
        brackets = every[ALT]
        caps = [b.notional_cap for b in brackets]
        assert caps == sorted(caps) and brackets[0].notional_floor == 0
        lev = brackets[0].max_leverage
        cap = max_notional_at(brackets, lev)
        assert cap is not None
        price = sim.exchange.last_price(ALT)
        step = parse_exchange_info(await c.exchange_info())[ALT].step_size
        over = ((cap / price) // step + 1) * step  # one step past the cap
        await c.change_leverage(ALT, lev)
        with pytest.raises(ExchangeError) as exc:
            await c.new_order(symbol=ALT, side="BUY", type="MARKET", quantity=str(over))
        assert exc.value.code == -2027
        allowed = max_leverage_for(brackets, over * price)
        assert allowed is not None and 0 < allowed < lev
        await c.change_leverage(ALT, allowed)
        filled = await c.new_order(symbol=ALT, side="BUY", type="MARKET", quantity=str(over))
        assert D(filled["origQty"]) == over
