"""Helpers the operating tests share: scrape a served `Monitor` over real HTTP and read
its metrics with prometheus-client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = aiohttp.ClientTimeout(total=5.0)


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


async def get(port: int, path: str) -> Answer:
    """GET http://127.0.0.1:`port``path` with a fresh connection."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return Answer(response.status, await response.text())


class Scrape:
    """One /metrics answer, parsed: `value(name, **labels)` finds one sample."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (have, value)
            for have, value in self.samples.get(name, [])
            if all(have.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with these labels (others may differ)."""
        found = self.find(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found} in\n{self.text}"
        return found[0][1]

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of `name` with `labels`, keyed by the value of `label`."""
        return {have[label]: value for have, value in self.find(name, **labels)}


async def scrape(port: int) -> Scrape:
    answer = await get(port, "/metrics")
    assert answer.status == 200, answer.text
    return Scrape(answer.text)
