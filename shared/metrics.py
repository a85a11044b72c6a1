"""Prometheus glue: a service's `stats()` dict is its metrics.

Services keep their counters in plain attributes and report them in `stats()` (the
seed's get_stats block).  Rather than booking every number twice (once in the stats,
once in a prometheus_client Counter), a custom collector reads `stats()` at scrape
time and exports every numeric leaf.  Naming:

- nested keys are flattened with `.` (`consumer.acked`), then made Prometheus-safe and
  prefixed: `slt_consumer_acked`;
- a leaf whose key ends in `_total` (or is listed in the service's `counter_keys`) is a
  counter, everything else a gauge;
- every sample carries `service` and `instance` labels;
- booleans export as 0/1; strings, None and lists are skipped (they are in /healthz).

Each service gets its own `CollectorRegistry`, so two services in one process (tests,
`slt up` in-process) never collide on the global registry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

Scalar = str | int | float | bool | None


def flatten(stats: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and other values become JSON strings."""
    out: dict[str, Scalar] = {}
    for key, val in stats.items():
        name = f"{prefix}{key}"
        if isinstance(val, Mapping):
            out.update(flatten(val, f"{name}."))
        elif val is None or isinstance(val, str | int | float | bool):
            out[name] = val
        elif isinstance(val, Decimal):
            out[name] = str(val)
        else:
            out[name] = orjson.dumps(val, default=str).decode()
    return out


def metric_name(key: str) -> str:
    name = _UNSAFE.sub("_", key).strip("_")
    return f"slt_{name}"


class StatsCollector(Collector):
    """Exports the numeric leaves of `stats_fn()` at every scrape."""

    def __init__(
        self,
        stats_fn: Callable[[], Mapping[str, Any]],
        labels_fn: Callable[[], Mapping[str, str]],
        counter_keys: frozenset[str] = frozenset(),
    ) -> None:
        """`labels_fn` is read at each scrape (a replica's instance can change once,
        when it claims a shard)."""
        self.stats_fn = stats_fn
        self.labels_fn = labels_fn
        self.counter_keys = counter_keys

    def collect(self) -> Iterator[Metric]:
        try:
            flat = flatten(self.stats_fn())
        except Exception:
            log.exception("stats() failed during a metrics scrape")
            flat = {"stats_errors_total": 1}
        labels = dict(self.labels_fn())
        names, values = list(labels), list(labels.values())
        seen: set[str] = set()
        for key, val in flat.items():
            if isinstance(val, bool):
                val = int(val)
            if not isinstance(val, int | float):
                continue
            is_counter = key.endswith("_total") or key in self.counter_keys
            name = metric_name(key.removesuffix("_total") if is_counter else key)
            if name in seen:  # two keys that sanitise to one name: keep the first
                continue
            seen.add(name)
            family: GaugeMetricFamily | CounterMetricFamily
            if is_counter:
                family = CounterMetricFamily(name, f"stats {key}", labels=names)
            else:
                family = GaugeMetricFamily(name, f"stats {key}", labels=names)
            family.add_metric(values, float(val))
            yield family


def build_registry(
    stats_fn: Callable[[], Mapping[str, Any]],
    labels_fn: Callable[[], Mapping[str, str]],
    counter_keys: frozenset[str] = frozenset(),
) -> CollectorRegistry:
    """A private registry with the stats collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats_fn, labels_fn, counter_keys))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
