"""A policy's own Prometheus metrics, served with the daemon's on ``[metrics] listen``.

Declare them once, at module level; count in the hooks::

    import portcullis as pc

    deferred = pc.metrics.counter("greylist_deferred_total", "Triplets deferred", labels=["reason"])
    lookup = pc.metrics.histogram("crm_lookup_seconds", "CRM lookups", buckets=[0.01, 0.1, 1])

    def on_rcpt(tx, rcpt):
        deferred.labels(reason="new").inc()
        with lookup.time():
            ...

Like the daemon's own, the values live in memory that every worker process
shares: one scrape gives the totals, and a reload or a restarted worker
keeps counting from where it was. Declaring a name again with the same
type, labels and buckets (a reload, another worker) gives the same metric;
with others it is ValueError (a restart changes them), as is a name whose
samples would share a name with another family's (a histogram ``req_seconds``
has ``req_seconds_count``: no gauge may be called so, whichever comes first).
Names starting with ``portcullis_`` are the daemon's. Without the daemon (``portcullis.testing``,
a unit test) the metrics count in this process; ``value`` reads them back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import _portcullis_core as _core

__all__ = ["Counter", "Gauge", "Histogram", "counter", "gauge", "histogram", "exposition"]

#: Prometheus' default buckets (seconds).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label_text(value: Any) -> str:
    """A label value as the table takes it: text that UTF-8 can carry, a lone surrogate
    (a header's undecodable byte, surrogateescape) shown as "?", as a control character is."""
    text = str(value)
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


class _Metric:
    _kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), buckets: Sequence[float] = ()) -> None:
        if not isinstance(name, str) or name.startswith("portcullis_"):
            raise ValueError(f"metric name {name!r}: names starting with portcullis_ are the daemon's")
        self.name = name
        self.label_names = tuple(labels)
        self._family = _core.metrics_family(name, help, self._kind, list(self.label_names), [float(b) for b in buckets])
        self._children: dict[tuple[str, ...], Any] = {}
        self._unlabelled = None if self.label_names else self._series(())

    def _series(self, values: tuple[str, ...]) -> Any:
        series = self._children.get(values)
        if series is None:
            series = self._children[values] = _core.metrics_series(self._family, [_label_text(v) for v in values])
        return series

    def labels(self, *values: Any, **named: Any) -> Any:
        """The series with these label values (by position or by name), for ``inc``, ``set`` or ``observe``."""
        if named:
            if values or set(named) != set(self.label_names):
                raise ValueError(f"{self.name}: want the labels {', '.join(self.label_names)}")
            values = tuple(named[n] for n in self.label_names)
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: want {len(self.label_names)} label value(s)")
        return _Child(self, self._series(tuple(str(v) for v in values)))

    def _only(self) -> Any:
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels: use .labels(...) first")
        return self._unlabelled

    @property
    def value(self) -> float:
        """The unlabelled series' value (a histogram: the sum of what it observed)."""
        return self._only().value


class _Child:
    __slots__ = ("_metric", "_series")

    def __init__(self, metric: _Metric, series: Any) -> None:
        self._metric, self._series = metric, series

    def inc(self, amount: float = 1.0) -> None:
        self._metric._inc(self._series, amount)

    def dec(self, amount: float = 1.0) -> None:
        self._metric._dec(self._series, amount)

    def set(self, value: float) -> None:
        self._metric._set(self._series, value)

    def observe(self, value: float) -> None:
        self._metric._observe(self._series, value)

    @contextmanager
    def time(self) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.observe(time.monotonic() - start)

    @property
    def value(self) -> float:
        return self._series.value


class Counter(_Metric):
    """A count that only goes up (``inc``)."""

    _kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        self._inc(self._only(), amount)

    def _inc(self, series: Any, amount: float) -> None:
        if not amount >= 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        series.inc(float(amount))

    def _fails(self, *_: Any) -> None:
        raise TypeError(f"{self.name} is a counter: it has inc() only")

    _dec = _set = _observe = _fails


class Gauge(_Metric):
    """A value that goes up and down: one value for every worker (what ``inc`` and ``dec`` add up; ``set`` replaces it)."""

    _kind = "gauge"

    def inc(self, amount: float = 1.0) -> None:
        self._inc(self._only(), amount)

    def dec(self, amount: float = 1.0) -> None:
        self._inc(self._only(), -amount)

    def set(self, value: float) -> None:
        self._set(self._only(), value)

    def _inc(self, series: Any, amount: float) -> None:
        series.inc(float(amount))

    def _dec(self, series: Any, amount: float) -> None:
        series.inc(-float(amount))

    def _set(self, series: Any, value: float) -> None:
        series.set(float(value))

    def _observe(self, *_: Any) -> None:
        raise TypeError(f"{self.name} is a gauge: it has set(), inc() and dec()")


class Histogram(_Metric):
    """Observations counted in buckets (``observe``, ``time()``)."""

    _kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels, buckets)

    def observe(self, value: float) -> None:
        self._observe(self._only(), value)

    def time(self) -> Any:
        """A context manager that observes the seconds its block took."""
        return _Child(self, self._only()).time()

    def _observe(self, series: Any, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):  # (NaN in a bucket and the sum for good; +Inf then -Inf: NaN too)
            raise ValueError(f"{self.name}: an observation is a finite number, not {value}")
        series.observe(value)

    def _fails(self, *_: Any) -> None:
        raise TypeError(f"{self.name} is a histogram: it has observe() and time()")

    _inc = _dec = _set = _fails


def counter(name: str, help: str, labels: Iterable[str] = ()) -> Counter:
    """Declares (or finds again) a counter."""
    return Counter(name, help, labels)


def gauge(name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
    """Declares (or finds again) a gauge."""
    return Gauge(name, help, labels)


def histogram(name: str, help: str, labels: Iterable[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
    """Declares (or finds again) a histogram with these bucket upper bounds (at most 16)."""
    return Histogram(name, help, labels, buckets)


def exposition() -> str:
    """Every metric (the daemon's and the policies') as ``GET /metrics`` would show it."""
    return _core.metrics_exposition()
