"""`slt backtest`: the live trader's and position controller's cores over historical klines,
with the simulator's matching engine as the broker.

Modules: data.py (kline files -> BarFeed), download.py (`slt data download`), broker.py
(adapter over `services.exchange_sim.engine.Exchange`), runner.py (the event loop),
flow.py (order/event flow as the services' shells do it), watch.py (fast mode: which bars
may matter), metrics.py (pure metrics), compare.py (buy and hold, the table), plots.py
(equity + drawdown PNG), session.py (learner on/off runs, output files), cli.py.
"""
