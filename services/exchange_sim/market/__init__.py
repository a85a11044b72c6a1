"""Market data for the simulator: seeded synthetic bars or replayed Binance kline files.

Both sources implement `Market` (symbols, specs, `bar(symbol, index)`, `bars_until`, `klines`),
and `bar_updates` turns a bar into the open-candle updates a kline stream shows before it closes.
"""

from .bar import INTERVALS_MS, Bar, BarUpdate, Market, MarketBase, bar_updates
from .replay import ReplayFormatError, ReplayMarket, load_file, parse_name
from .synthetic import SyntheticMarket

__all__ = [
    "INTERVALS_MS",
    "Bar",
    "BarUpdate",
    "Market",
    "MarketBase",
    "ReplayFormatError",
    "ReplayMarket",
    "SyntheticMarket",
    "bar_updates",
    "load_file",
    "parse_name",
]
