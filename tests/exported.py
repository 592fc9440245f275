"""One sample's value in Prometheus exposition text: what a scrape of /metrics shows."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from echoproject import metrics


def sample_value(text: str, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels in `text`, 0 when absent (a counter that
    was never incremented is not exported)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def this_process(name: str, **labels: str) -> float:
    """The sample as the metrics exporter of this process (the test's) shows it."""
    return sample_value(metrics.exposition().decode(), name, **labels)
