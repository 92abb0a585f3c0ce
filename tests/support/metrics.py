"""Reading the server's /metrics in tests, parsed with prometheus_client."""

import requests
from prometheus_client.parser import text_string_to_metric_families


def samples_of(text: str) -> dict:
    """Every sample of a Prometheus text: {(name, frozenset of label pairs): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(base: str) -> dict:
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples_of(response.text)


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not there yet (a labelled counter appears at its first use)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
