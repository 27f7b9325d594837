"""Deterministic, realistic GetRecords pages for benchmarks.

Each page holds up to 1,000 records and at most 1 MB, as the service caps them;
INSERT/MODIFY/REMOVE about 30/60/10, NEW_AND_OLD_IMAGES, items of about 15 attributes
with nested maps and lists, numbers, a string set and a binary: about 1 KB per image.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import msgspec

MAX_PAGE_BYTES = 1024 * 1024
MAX_PAGE_RECORDS = 1000


def _image(rng: random.Random, pk: str, version: int) -> dict[str, Any]:
    return {
        "pk": {"S": pk},
        "sk": {"S": f"profile#{version}"},
        "name": {
            "S": rng.choice(["Ann", "Bob", "Chen", "Dara", "Eli"]) + " " + "x" * rng.randint(5, 20)
        },
        "email": {"S": f"{pk}@example.com"},
        "age": {"N": str(rng.randint(18, 90))},
        "balance": {"N": f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}"},
        "active": {"BOOL": rng.random() < 0.8},
        "nickname": {"NULL": True},
        "tags": {"SS": [f"tag{rng.randint(0, 50)}" for _ in range(4)]},
        "avatar": {"B": base64.b64encode(rng.randbytes(48)).decode()},
        "address": {
            "M": {
                "street": {"S": f"{rng.randint(1, 999)} Main Street"},
                "city": {"S": rng.choice(["Lisbon", "Oslo", "Lima", "Pune"])},
                "zip": {"S": f"{rng.randint(10000, 99999)}"},
                "geo": {
                    "M": {
                        "lat": {"N": f"{rng.uniform(-90, 90):.6f}"},
                        "lon": {"N": f"{rng.uniform(-180, 180):.6f}"},
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
        "bio": {"S": "lorem ipsum " * rng.randint(8, 14)},
    }


def _record(rng: random.Random, sequence: int) -> dict[str, Any]:
    event = rng.choices(["INSERT", "MODIFY", "REMOVE"], [3, 6, 1])[0]
    pk = f"user#{rng.randint(0, 10**6)}"
    version = rng.randint(1, 100)
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": 1.7645e9 + sequence,
        "Keys": {"pk": {"S": pk}, "sk": {"S": f"profile#{version}"}},
        "SequenceNumber": str(10**20 + sequence),
        "SizeBytes": 2100,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if event != "REMOVE":
        dynamodb["NewImage"] = _image(rng, pk, version)
    if event != "INSERT":
        dynamodb["OldImage"] = _image(rng, pk, version - 1)
    return {
        "eventID": f"{sequence:032x}",
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": dynamodb,
    }


def make_pages(count: int, *, seed: int = 6) -> list[bytes]:
    """`count` GetRecords response bodies, each as full as the service allows."""
    rng = random.Random(seed)
    encoder = msgspec.json.Encoder()
    pages: list[bytes] = []
    sequence = 0
    for _ in range(count):
        records: list[bytes] = []
        size = 0
        while len(records) < MAX_PAGE_RECORDS:
            encoded = encoder.encode(_record(rng, sequence))
            if size + len(encoded) > MAX_PAGE_BYTES - 200:
                break
            records.append(encoded)
            size += len(encoded) + 1
            sequence += 1
        iterator = b'"' + base64.b64encode(rng.randbytes(96)) + b'"'
        pages.append(
            b'{"Records":[' + b",".join(records) + b'],"NextShardIterator":' + iterator + b"}"
        )
    return pages
