"""The chaos harness of issue #11, shared by `tests/test_e2e_chaos.py` and `bench/soak.py`.

    config.py        ChaosConfig (size, speed, timings, planted secrets) -> services' YAML
    system.py        System: Redis (AOF), the simulator, every service under Supervisor;
                     kill -9, freeze, Redis restart, admin API, health reads
    simproc.py       the simulator's entry point plus read-only observer routes
                     (positions, open algo orders, balances, the engine's audit)
    exchange.py      ExchangeSnapshot: the exchange's positions / stops / balances
    faults.py        the fault schedule and the record of what it did
    monitor.py       HealthTracker (counters over restarts), ClockMap, ProtectionWatch,
                     Sampler (background sampling during the run)
    klines.py        stream vs the simulator's record of closed klines
    checks.py        orders, caches, trades, health figures
    secrets_scan.py  logs, every Redis key and value, report files
    figures.py       Figure + the printed table
    run.py           run_chaos(): one run, start to finish -> ChaosResult

Usage::

    cfg = ChaosConfig(work_dir=tmp, symbols=50, speed=240.0)
    result = await run_chaos(cfg)            # or duration_s=600 for a soak
    print(render(result.figures)); assert not result.failed
"""
