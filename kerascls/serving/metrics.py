"""Prometheus metrics of the local server, under TF Serving's metric names.

Served at the ``prometheus_config.path`` of ``--monitoring_config_file`` (by default
``/monitoring/prometheus/metrics``) on the REST port, in the Prometheus text format:

* ``:tensorflow:serving:request_count{model_name, status}``: requests answered, by status code;
* ``:tensorflow:serving:request_latency{model_name, API, entrypoint}``: a latency histogram in
  microseconds (``_bucket``, ``_sum``, ``_count``), API ``predict`` / ``metadata`` / ``status``
  and entrypoint ``REST`` / ``GRPC``;
* ``:tensorflow:serving:model_versions_available{model_name}``: versions in state AVAILABLE.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# Latency buckets in microseconds: 100 us .. 10 s.
BUCKETS = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
)


def _labels(**kv) -> str:
    def esc(v):
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


class Metrics:
    """Thread-safe counters and histograms."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._hist: dict[tuple[str, str, str], list] = {}

    def observe(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._counts[(model, status)] += 1
            h = self._hist.setdefault((model, api, entrypoint), [[0] * len(BUCKETS), 0.0, 0])
            i = bisect.bisect_left(BUCKETS, micros)
            if i < len(BUCKETS):
                h[0][i] += 1
            h[1] += micros
            h[2] += 1

    def render(self, available: dict[str, int]) -> str:
        """The metrics page; ``available`` maps model names to their AVAILABLE version counts."""
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            counts = dict(self._counts)
            hist = {k: (list(v[0]), v[1], v[2]) for k, v in self._hist.items()}
        for (model, status), n in sorted(counts.items()):
            lines.append(
                f":tensorflow:serving:request_count{_labels(model_name=model, status=status)} {n}"
            )
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for (model, api, entry), (buckets, total, count) in sorted(hist.items()):
            running = 0
            for le, n in zip(BUCKETS, buckets, strict=True):
                running += n
                lab = _labels(model_name=model, API=api, entrypoint=entry, le=le)
                lines.append(f":tensorflow:serving:request_latency_bucket{lab} {running}")
            lab = _labels(model_name=model, API=api, entrypoint=entry, le="+Inf")
            lines.append(f":tensorflow:serving:request_latency_bucket{lab} {count}")
            lab = _labels(model_name=model, API=api, entrypoint=entry)
            lines.append(f":tensorflow:serving:request_latency_sum{lab} {total:.1f}")
            lines.append(f":tensorflow:serving:request_latency_count{lab} {count}")
        lines.append("# TYPE :tensorflow:serving:model_versions_available gauge")
        for model, n in sorted(available.items()):
            lines.append(
                f":tensorflow:serving:model_versions_available{_labels(model_name=model)} {n}"
            )
        return "\n".join(lines) + "\n"
