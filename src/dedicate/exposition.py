"""Prometheus text pages through ``prometheus-client``: the server's, the gateway's and dedicate's engines'.

A page is a ``CollectorRegistry`` of collectors, each a function that reads the
current values when the page is scraped and returns metric families (built with
``gauge`` and ``counter``). ``prometheus-client`` writes the text: label values
escaped, labels sorted by name, values as Go floats (``5.0``, ``1.7e+09``).

Counter names end in ``_total``, as in Prometheus' text format 0.0.4: the
family, its ``# TYPE`` line and its samples all carry that name.

Outside the layers (like ``settings`` and ``clock``): the engines, the gateway
and the server all use it, and it imports nothing of dedicate's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as Metric  # a metric family, as collectors return them
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8"

Families = Iterable[Metric]
Collect = Callable[[], Families]
Sample = tuple[Sequence[str], float]  # label values (in the family's label order), value


class _Collector:
    """A registry's collector around a function read at each scrape."""

    def __init__(self, collect: Collect) -> None:
        self._collect = collect

    def collect(self) -> Families:
        return self._collect()


def gauge(name: str, help_: str, labels: Sequence[str] = (), samples: Iterable[Sample] = ()) -> Metric:
    family = GaugeMetricFamily(name, help_, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, help_: str, labels: Sequence[str] = (), samples: Iterable[Sample] = ()) -> Metric:
    if not name.endswith("_total"):  # prometheus-client would add the suffix: the exposed name would change
        raise ValueError(f"a counter's name ends in _total: {name}")
    family = CounterMetricFamily(name, help_, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def registry(*collectors: Collect) -> CollectorRegistry:
    """A registry of ``collectors``; a metric name produced by two of them is refused when registered."""
    reg = CollectorRegistry(auto_describe=True)
    for collect in collectors:
        reg.register(_Collector(collect))
    return reg


def text(reg: CollectorRegistry) -> str:
    """The page: every collector read now, in the order registered."""
    return generate_latest(reg).decode()


def render(*families: Families) -> str:
    """A page of families already read (each group its own collector)."""
    return text(registry(*(_read(list(f)) for f in families)))


def _read(families: list[Metric]) -> Collect:
    return lambda: families
