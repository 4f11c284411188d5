"""Reading a /metrics body in tests: every sample by name and label set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text body, by name and label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(body: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; KeyError when there is none."""
    return body[name, frozenset(labels.items())]
