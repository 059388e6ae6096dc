"""Prometheus metrics of ``baco serve`` (one private registry per app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..types import Generation

#: Buckets for rows per request and for base share.
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SHARE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class _EngineQueueCollector:
    """Exports the engine scheduler's counters: steps, the rows they carried, requests."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        scheduler = getattr(self.engine, "_scheduler", None)
        steps = getattr(scheduler, "steps", 0)
        row_steps = getattr(scheduler, "row_steps", 0)
        yield CounterMetricFamily(
            "baco_engine_steps", "Decode steps run by the engine's scheduler", steps
        )
        yield CounterMetricFamily(
            "baco_engine_row_steps",
            "Rows decoded over all steps (over steps: the mean batch size)",
            row_steps,
        )
        yield CounterMetricFamily(
            "baco_engine_requests",
            "Requests admitted into the running batch (generate and stream)",
            getattr(scheduler, "admitted", 0),
        )
        yield GaugeMetricFamily(
            "baco_engine_mean_batch_rows",
            "Mean rows per decode step since start",
            row_steps / steps if steps else 0.0,
        )
        yield GaugeMetricFamily(
            "baco_engine_running_rows",
            "Rows in the running batch now",
            getattr(scheduler, "running_rows", 0),
        )
        yield GaugeMetricFamily(
            "baco_engine_waiting_requests",
            "Requests waiting for room in the batch",
            getattr(scheduler, "waiting", 0),
        )
        fallbacks = CounterMetricFamily(
            "baco_graph_fallbacks",
            "Batches the graph path left on the eager executor, by reason",
            labels=["reason"],
        )
        counts = getattr(getattr(scheduler, "executor", None), "fallbacks", None) or {}
        for reason, count in sorted(counts.items()):
            fallbacks.add_metric([reason], count)
        yield fallbacks


class ServeMetrics:
    """Requests, tokens, queue depth, batch size and base share of one server."""

    def __init__(self, engine: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "baco_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("baco_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter(
            "baco_generated_tokens", "Tokens generated (all samples)", registry=r
        )
        self.stream_tokens = Counter(
            "baco_stream_tokens",
            "Tokens produced by streamed decodes, counted as the engine yields them",
            registry=r,
        )
        self.cancelled = Counter(
            "baco_cancelled_streams", "Streams stopped early (client gone or shutdown)", registry=r
        )
        self.queue_depth = Gauge(
            "baco_queue_depth", "Generation requests admitted and not finished", registry=r
        )
        self.request_rows = Histogram(
            "baco_request_rows", "Rows (prompts x n) per request", buckets=ROW_BUCKETS, registry=r
        )
        self.base_share = Histogram(
            "baco_base_share",
            "Per-sample share of tokens from the base model",
            buckets=SHARE_BUCKETS,
            registry=r,
        )
        r.register(_EngineQueueCollector(engine))

    def record_generation(self, generation: Generation) -> None:
        """Count one finished sample's tokens and base share."""
        self.generated_tokens.inc(len(generation.token_ids))
        self.base_share.observe(generation.base_share)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
