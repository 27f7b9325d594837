"""Deterministic, realistic GetRecords pages for benchmarks.

Each page holds up to 1,000 records and at most 1 MB, as the service caps them;
INSERT/MODIFY/REMOVE about 30/60/10 (a few REMOVEs are TTL deletes), NEW_AND_OLD_IMAGES,
items of 16 attributes with nested maps and lists, integers and fractions, a string set,
a binary and text with commas: about 1 KB per image. Values are written the way DynamoDB
writes them: numbers without trailing zeros, sets without duplicates, the keys of a
record equal to the key attributes of its images, and ``SizeBytes`` counted as DynamoDB
counts it.
"""

from __future__ import annotations

import base64
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["MAX_PAGE_BYTES", "MAX_PAGE_RECORDS", "PageStats", "make_pages", "stats"]

MAX_PAGE_BYTES = 1024 * 1024
MAX_PAGE_RECORDS = 1000


def _number(text: str) -> str:
    """A number as DynamoDB writes it: no trailing zeros in a fraction, no "-0"."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _image(rng: random.Random, pk: str, sk: str, version: int) -> dict[str, Any]:
    return {
        "pk": {"S": pk},
        "sk": {"S": sk},
        "name": {
            "S": rng.choice(["Ann", "Bob", "Chen", "Dara", "Eli"]) + " " + "x" * rng.randint(5, 20)
        },
        "email": {"S": f"{pk}@example.com"},
        "age": {"N": str(rng.randint(18, 90))},
        "balance": {"N": _number(f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}")},
        "active": {"BOOL": rng.random() < 0.8},
        "nickname": {"NULL": True},
        "tags": {"SS": [f"tag{n}" for n in rng.sample(range(50), 4)]},
        "avatar": {"B": base64.b64encode(rng.randbytes(48)).decode()},
        "address": {
            "M": {
                "street": {"S": f"{rng.randint(1, 999)} Main Street"},
                "city": {"S": rng.choice(["Lisbon", "Oslo", "Lima", "Pune"])},
                "zip": {"S": f"{rng.randint(10000, 99999)}"},
                "geo": {
                    "M": {
                        "lat": {"N": _number(f"{rng.uniform(-90, 90):.6f}")},
                        "lon": {"N": _number(f"{rng.uniform(-180, 180):.6f}")},
                    }
                },
            }
        },
        "orders": {
            "L": [
                {
                    "M": {
                        "id": {"S": f"o{rng.randint(0, 10**9)}"},
                        "total": {"N": str(rng.randint(1, 999))},
                        "items": {"N": str(rng.randint(1, 9))},
                    }
                }
                for _ in range(3)
            ]
        },
        "scores": {"L": [{"N": str(rng.randint(0, 100))} for _ in range(8)]},
        "version": {"N": str(version)},
        "updated": {"S": f"2026-11-{rng.randint(1, 28):02d}T12:00:00Z"},
        "bio": {"S": "Lorem ipsum, dolor sit amet. " * rng.randint(3, 6)},
    }


def _value_size(av: dict[str, Any]) -> int:
    """DynamoDB's size of one AttributeValue (strings by UTF-8 length, numbers about one
    byte per two significant digits plus one, 3 bytes and 1 per element for M and L)."""
    ((tag, value),) = av.items()
    if tag == "S":
        return len(value.encode())
    if tag == "N":
        return (len(value.lstrip("-").replace(".", "").strip("0")) + 1) // 2 + 1
    if tag == "B":
        return len(base64.b64decode(value))
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "SS":
        return sum(len(s.encode()) for s in value)
    if tag == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in value.items())
    if tag == "L":
        return 3 + sum(_value_size(v) + 1 for v in value)
    raise ValueError(tag)


def _item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + _value_size(av) for name, av in item.items())


def _record(rng: random.Random, sequence: int) -> dict[str, Any]:
    event = rng.choices(["INSERT", "MODIFY", "REMOVE"], [3, 6, 1])[0]
    pk = f"user#{rng.randint(0, 10**6)}"
    sk = f"profile#{rng.randint(0, 9)}"
    version = rng.randint(1, 100)
    keys = {"pk": {"S": pk}, "sk": {"S": sk}}
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1_764_500_000 + sequence // 50,
        "Keys": keys,
        "SequenceNumber": str(10**20 + sequence),
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    size = _item_size(keys)
    if event != "REMOVE":
        dynamodb["NewImage"] = _image(rng, pk, sk, version)
        size += _item_size(dynamodb["NewImage"])
    if event != "INSERT":
        dynamodb["OldImage"] = _image(rng, pk, sk, version - 1)
        size += _item_size(dynamodb["OldImage"])
    dynamodb["SizeBytes"] = size
    record: dict[str, Any] = {
        "eventID": f"{rng.getrandbits(128):032x}",
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
    }
    if event == "REMOVE" and rng.random() < 0.2:
        record["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    return record


def make_pages(count: int, *, seed: int = 6, max_records: int = MAX_PAGE_RECORDS) -> list[bytes]:
    """`count` GetRecords response bodies, each as full as the service allows (at most
    `max_records` records and 1 MB). The same arguments always give the same bytes."""
    if not 1 <= max_records <= MAX_PAGE_RECORDS:
        raise ValueError(f"max_records must be 1..{MAX_PAGE_RECORDS}, got {max_records}")
    rng = random.Random(seed)
    encoder = msgspec.json.Encoder()
    pages: list[bytes] = []
    sequence = 0
    pending: bytes | None = None  # the record that did not fit the previous page
    for _ in range(count):
        iterator = b'"' + base64.b64encode(rng.randbytes(96)) + b'"'
        head, tail = b'{"Records":[', b'],"NextShardIterator":' + iterator + b"}"
        records: list[bytes] = []
        size = len(head) + len(tail)
        while len(records) < max_records:
            if pending is None:
                pending = encoder.encode(_record(rng, sequence))
                sequence += 1
            if size + len(pending) + 1 > MAX_PAGE_BYTES:
                break
            records.append(pending)
            size += len(pending) + 1
            pending = None
        page = head + b",".join(records) + tail
        assert len(page) <= MAX_PAGE_BYTES
        pages.append(page)
    return pages


@dataclass(frozen=True)
class PageStats:
    pages: int
    records: int
    events: dict[str, int]
    page_bytes: float  # mean
    image_bytes: float  # mean JSON size of one image
    attributes: float  # mean top-level attributes per image

    def describe(self) -> str:
        mix = "/".join(f"{100 * self.events.get(e, 0) / self.records:.0f}" for e in _EVENTS)
        return (
            f"{self.pages} GetRecords pages of {self.records / self.pages:.0f} records and "
            f"{self.page_bytes / 1024:.0f} KiB on average ({self.records} records), "
            f"INSERT/MODIFY/REMOVE {mix} %, NEW_AND_OLD_IMAGES, images of "
            f"{self.attributes:.0f} attributes and {self.image_bytes:.0f} bytes of JSON"
        )


_EVENTS = ("INSERT", "MODIFY", "REMOVE")


def stats(pages: list[bytes]) -> PageStats:
    """What `pages` hold, for a benchmark's notes."""
    events: Counter[str] = Counter()
    image_sizes: list[int] = []
    attributes: list[int] = []
    records = 0
    for page in pages:
        for record in msgspec.json.decode(page)["Records"]:
            records += 1
            events[record["eventName"]] += 1
            for part in ("NewImage", "OldImage"):
                image = record["dynamodb"].get(part)
                if image is not None:
                    image_sizes.append(len(msgspec.json.encode(image)))
                    attributes.append(len(image))
    return PageStats(
        pages=len(pages),
        records=records,
        events=dict(events),
        page_bytes=sum(map(len, pages)) / len(pages),
        image_bytes=sum(image_sizes) / len(image_sizes),
        attributes=sum(attributes) / len(attributes),
    )
