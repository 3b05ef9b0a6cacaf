"""Prometheus text exposition (format 0.0.4): request counters and latency histograms."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in pairs.items()) + "}"


class Metrics:
    """Counters by (method, route template, status) and durations by (method, route template).

    Route templates, never raw paths, are the labels: random URLs must not grow the
    number of series without bound.
    """

    def __init__(self, prefix: str, version: str) -> None:
        self.prefix = prefix
        self.version = version
        self.start_time = time.time()
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, str] = {}
        self.gauges: list[Callable[[], list[tuple[str, str, dict[str, str], float]]]] = []

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            slots = self._durations.setdefault((method, route), [0.0] * (len(BUCKETS) + 2))
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    slots[index] += 1
            slots[-2] += seconds
            slots[-1] += 1

    def count(self, name: str, help_text: str, amount: float = 1, **label_values: str) -> None:
        """Add to a counter of this service (name without the prefix)."""
        with self._lock:
            self._help[name] = help_text
            key = (name, tuple(sorted(label_values.items())))
            self._counters[key] = self._counters.get(key, 0) + amount

    def render(self) -> str:
        with self._lock:
            requests = dict(self._requests)
            durations = {key: list(value) for key, value in self._durations.items()}
            counters = dict(self._counters)
            helps = dict(self._help)
        p = self.prefix
        lines = [f"# HELP {p}_http_requests_total HTTP requests answered.", f"# TYPE {p}_http_requests_total counter"]
        for (method, route, status), value in sorted(requests.items()):
            lines.append(
                f"{p}_http_requests_total{labels({'method': method, 'path': route, 'status': status})} {value}"
            )
        name = f"{p}_http_request_duration_seconds"
        lines += [f"# HELP {name} Time to answer HTTP requests.", f"# TYPE {name} histogram"]
        for (method, route), slots in sorted(durations.items()):
            base = {"method": method, "path": route}
            for index, bound in enumerate(BUCKETS):
                lines.append(f"{name}_bucket{labels({**base, 'le': f'{bound:g}'})} {int(slots[index])}")
            lines.append(f"{name}_bucket{labels({**base, 'le': '+Inf'})} {int(slots[-1])}")
            lines.append(f"{name}_sum{labels(base)} {slots[-2]:.6f}")
            lines.append(f"{name}_count{labels(base)} {int(slots[-1])}")
        for counter in sorted({key[0] for key in counters}):
            lines += [f"# HELP {p}_{counter} {helps[counter]}", f"# TYPE {p}_{counter} counter"]
            for (cname, pairs), value in sorted(counters.items()):
                if cname == counter:
                    lines.append(f"{p}_{counter}{labels(dict(pairs))} {value:g}")
        seen: set[str] = set()
        for gauge in self.gauges:
            for gname, help_text, pairs, value in gauge():
                if gname not in seen:
                    seen.add(gname)
                    lines += [f"# HELP {p}_{gname} {help_text}", f"# TYPE {p}_{gname} gauge"]
                lines.append(f"{p}_{gname}{labels(pairs)} {value:g}")
        lines += [
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.start_time:.3f}",
            f"# HELP {p}_build_info The running build, always 1.",
            f"# TYPE {p}_build_info gauge",
            f"{p}_build_info{labels({'version': self.version, 'flavor': 'reference'})} 1",
        ]
        return "\n".join(lines) + "\n"
