"""Tests of `redis_sink()` against a real redis-server (tests/redis_server.py), driven
through the pipeline runtime with a MemoryStream source, and through its writer where a
test needs to act between two attempts."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from moto_server import closed_port

import flowstream as fs
from flowstream.errors import DeliveryError, PipelineError
from flowstream.policy import FailurePolicy
from flowstream.record import Record
from flowstream.runtime.engine import run_pipeline
from flowstream.sinks import Batch, Sink
from flowstream.sinks.redis import redis as redis_sink  # flowstream.sinks.redis
from flowstream.testing import MemoryStream

FAST = FailurePolicy(retries=2, backoff=(0.01, 0.05))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own, on a freshly reset server."""
    async with aioredis.Redis.from_url(redis_url) as redis_client:
        yield redis_client


async def drain(pipeline: fs.Pipeline[Any], policy: FailurePolicy = FAST) -> fs.RunReport:
    """`pipeline.run(drain=True)` with retries that do not make the test wait."""
    return await run_pipeline(
        pipeline.compile(),
        pipeline.source,
        name=pipeline.name or "pipeline",
        checkpoints=None,
        drain=True,
        grace_period=10,
        handle_signals=False,
        policy=policy,
    )


async def keys_left(client: aioredis.Redis) -> set[str]:
    return {k.decode() if isinstance(k, bytes) else k for k in await client.keys("*")}


async def get(client: aioredis.Redis, key: str) -> bytes:
    value = await client.get(key)
    assert isinstance(value, bytes), f"{key} holds no string"
    return value


def image(record: Record) -> dict[str, Any]:
    """The record's new image (every record these tests map has one)."""
    assert record.new_image is not None
    return record.new_image


async def connections(client: aioredis.Redis) -> int:
    """Clients connected to the server, this test's own included."""
    return len(await client.client_list())


class TestBuild:
    @pytest.mark.parametrize(
        ("url", "action", "shown"),
        [
            ("redis://127.0.0.1:6379/0", "delete", "redis(redis://127.0.0.1:6379/0 delete)"),
            ("redis://cache", "delete", "redis(redis://cache:6379/0 delete)"),
            (
                "redis://app:s3cret@cache.internal:6380/2",
                "set",
                "redis(redis://cache.internal:6380/2 set)",
            ),
            ("rediss://:s3cret@[::1]:7000/1", "set", "redis(rediss://[::1]:7000/1 set)"),
            (
                "unix:///run/redis.sock?db=3&password=s3cret",
                "delete",
                "redis(unix:///run/redis.sock?db=3 delete)",
            ),
        ],
        ids=["plain", "defaults", "password", "tls-ipv6", "unix-socket"],
    )
    def test_describe_shows_where_and_what_but_no_secret(
        self, url: str, action: Any, shown: str
    ) -> None:
        sink = redis_sink(url, action=action)
        assert sink.describe() == shown
        assert sink.name == shown

    def test_describe_of_publish(self) -> None:
        sink = redis_sink(action="publish", channel="changes")
        assert sink.describe() == "redis(redis://127.0.0.1:6379/0 publish)"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"action": "purge"}, "use one of 'delete', 'set', 'publish'"),
            ({"url": "http://cache:6379"}, "must specify one of the following schemes"),
            ({"action": "publish"}, "needs channel="),
            ({"action": "publish", "channel": "c", "key": "k"}, "uses no key="),
            ({"channel": "c"}, "uses no channel="),
            ({"value": lambda v, r: v}, "stores no value"),
            ({"ttl": 10}, "ttl= works with action='set' only"),
            ({"action": "set", "ttl": 0}, "positive, finite time of at least 1 ms"),
            ({"action": "set", "ttl": float("inf")}, "positive, finite"),
            ({"action": "set", "ttl": "10"}, "a number of seconds or a timedelta"),
            ({"action": "set", "ttl": True}, "a number of seconds or a timedelta"),
            ({"key": "user:{}"}, "positional field {}"),
            ({"key": "user:{0}"}, "positional field {0}"),
            ({"key": "user:{pk"}, "not a valid template"),
            ({"key": 42}, "got int; pass a template"),
            ({"timeout": 0}, "timeout=0"),
            ({"max_connections": 0}, "max_connections=0"),
        ],
        ids=lambda v: str(v) if isinstance(v, str) else None,
    )
    def test_bad_options_fail_when_built(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(PipelineError, match=r"sinks\.redis") as caught:
            redis_sink(**kwargs)
        assert message in str(caught.value)

    def test_an_async_key_function_fails_when_built(self) -> None:
        async def user_key(value: Any, record: Record) -> str:
            return "k"

        with pytest.raises(PipelineError, match="is an async function; pass a plain"):
            redis_sink(key=user_key)  # type: ignore[arg-type]

    def test_password_is_not_in_a_bad_url_error(self) -> None:
        with pytest.raises(PipelineError) as caught:
            redis_sink("redi://user:s3cret@cache:6379/0")
        assert "s3cret" not in str(caught.value)

    def test_without_redis_py_building_says_how_to_install(self) -> None:
        # A fresh interpreter in which `import redis` fails, as it does without the extra.
        script = (
            "import sys\n"
            "sys.modules['redis'] = None\n"
            "from flowstream import sinks\n"
            "from flowstream.sinks.redis import redis\n"
            "from flowstream.errors import SinkError\n"
            "try:\n"
            "    redis()\n"
            "except SinkError as exc:\n"
            "    print(exc)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "pip install 'flowstream[redis]'" in done.stdout


class TestDelete:
    async def test_modify_and_remove_delete_their_keys(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(3)]
        events = ["INSERT", "MODIFY", "REMOVE"]
        for n in range(30):
            await client.set(f"user:{n}", "cached")
            stream.put(shards[n % 3], events[n // 3 % 3], {"pk": str(n)})
        await client.set("other", "untouched")

        sink = redis_sink(redis_url, key="user:{pk}")
        pipeline = fs.Pipeline(stream).filter(events=["MODIFY", "REMOVE"]).to(sink)
        report = await pipeline.run(drain=True)

        inserted = {f"user:{n}" for n in range(30) if n // 3 % 3 == 0}
        assert await keys_left(client) == inserted | {"other"}
        assert report.delivered == 18
        assert report.sinks[sink.name].batches == 3  # one pipeline per shard's page

    async def test_default_key_is_the_records_keys_as_sorted_json(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        await client.set('{"pk":"user#1","sk":7}', "cached")
        await client.set('{"pk":"user#1","sk":8}', "cached")
        stream.put(shard, "REMOVE", {"sk": 7, "pk": "user#1"})
        await fs.Pipeline(stream).to(redis_sink(redis_url)).run(drain=True)
        assert await keys_left(client) == {'{"pk":"user#1","sk":8}'}

    async def test_key_function_gets_the_element_and_its_record(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(5):
            await client.set(f"tenant-{n}/profile", "cached")
            stream.put(shard, "MODIFY", {"pk": n}, {"tenant": f"tenant-{n}"})
        seen: list[tuple[Any, str]] = []

        def profile_key(value: Any, record: Record) -> str:
            seen.append((value, record.sequence_number))
            return f"{value}/profile"

        pipeline = (
            fs.Pipeline(stream)
            .map(lambda r: image(r)["tenant"])
            .to(redis_sink(redis_url, key=profile_key))
        )
        await pipeline.run(drain=True)
        assert await keys_left(client) == set()
        records = stream.records(shard)
        assert seen == [(f"tenant-{n}", records[n].sequence_number) for n in range(5)]


class TestSet:
    async def test_set_stores_the_serialised_element_with_a_ttl(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a", "name": "Ada", "age": 36})
        stream.put(shard, "MODIFY", {"pk": "b"}, {"pk": "b", "name": "Bo", "age": 40})
        sink = redis_sink(redis_url, action="set", key="user:{pk}", ttl=60)
        await fs.Pipeline(stream).map(lambda r: r.new_image).to(sink).run(drain=True)

        assert msgspec.json.decode(await get(client, "user:a")) == {
            "pk": "a",
            "name": "Ada",
            "age": 36,
        }
        assert msgspec.json.decode(await get(client, "user:b"))["name"] == "Bo"
        for key in ("user:a", "user:b"):
            assert 0 < await client.ttl(key) <= 60

    async def test_a_fractional_ttl_is_kept_to_the_millisecond(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", {"pk": "a"}, {"v": 1})
        sink = redis_sink(redis_url, action="set", key="{pk}", ttl=timedelta(seconds=90.5))
        await fs.Pipeline(stream).map(lambda r: "x").to(sink).run(drain=True)
        assert 89_000 < await client.pttl("a") <= 90_500

    async def test_remove_deletes_the_key_and_the_last_change_wins(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        await client.set("user:gone", "stale")
        stream.put(shard, "INSERT", {"pk": "kept"}, {"v": 1})
        stream.put(shard, "MODIFY", {"pk": "kept"}, {"v": 2})
        stream.put(shard, "INSERT", {"pk": "back"}, {"v": 1})
        stream.put(shard, "REMOVE", {"pk": "back"}, old_image={"v": 1})
        stream.put(shard, "INSERT", {"pk": "back"}, {"v": 3})
        stream.put(shard, "REMOVE", {"pk": "gone"}, old_image={"v": 0})

        calls: list[str] = []

        def new_image(value: Any, record: Record) -> Any:
            calls.append(record.event_name)
            return record.new_image

        sink = redis_sink(redis_url, action="set", key="user:{pk}", value=new_image)
        await fs.Pipeline(stream).to(sink).run(drain=True)

        assert await keys_left(client) == {"user:kept", "user:back"}
        assert await client.get("user:kept") == b'{"v":2}'
        assert await client.get("user:back") == b'{"v":3}'
        assert "REMOVE" not in calls  # a REMOVE deletes: no value is computed for it

    async def test_set_replaces_a_key_of_another_type(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        # SET overwrites whatever the key holds, so the three actions never meet
        # WRONGTYPE: a mirror repairs a key that someone filled with a list.
        await client.rpush("user:a", "x")
        stream = MemoryStream()
        stream.put(stream.add_shard(), "MODIFY", {"pk": "a"}, {"v": 1})
        sink = redis_sink(redis_url, action="set", key="user:{pk}")
        await fs.Pipeline(stream).map(lambda r: r.new_image).to(sink).run(drain=True)
        assert await client.type("user:a") == b"string"


async def receive(pubsub: aioredis.client.PubSub, count: int) -> list[tuple[str, bytes]]:
    """The next `count` messages as (channel, data), failing the test after 10 s."""
    messages: list[tuple[str, bytes]] = []
    with anyio.fail_after(10):
        async for message in pubsub.listen():
            if message["type"] in ("message", "pmessage"):
                messages.append((message["channel"].decode(), message["data"]))
                if len(messages) == count:
                    break
    return messages


async def subscribed(pubsub: aioredis.client.PubSub, *, pattern: str) -> None:
    """Subscribe and wait for the server's confirmation, so no later PUBLISH is missed."""
    await pubsub.psubscribe(pattern)
    with anyio.fail_after(10):
        async for message in pubsub.listen():
            if message["type"] == "psubscribe":
                return


class TestPublish:
    async def test_every_element_is_published_in_order_per_shard(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream(page_size=7)
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(200):
            stream.put(shards[n % 4], "MODIFY", {"pk": f"k{n}"}, {"n": n})

        async with client.pubsub() as pubsub:
            await subscribed(pubsub, pattern="changes")
            sink = redis_sink(redis_url, action="publish", channel="changes")
            pipeline = fs.Pipeline(stream).map(lambda r: {"shard": r.shard_id, "n": image(r)["n"]})
            await pipeline.to(sink).run(drain=True)
            messages = await receive(pubsub, 200)

        assert {channel for channel, _ in messages} == {"changes"}
        by_shard: dict[str, list[int]] = {}
        for _, data in messages:
            body = msgspec.json.decode(data)
            by_shard.setdefault(body["shard"], []).append(body["n"])
        assert by_shard == {s: list(range(i, 200, 4)) for i, s in enumerate(shards)}

    @pytest.mark.parametrize(
        "channel",
        ["changes:{kind}", lambda value, record: f"changes:{record.keys['kind']}"],
        ids=["template", "function"],
    )
    async def test_channel_per_record(
        self,
        redis_url: str,
        client: aioredis.Redis,
        channel: str | Callable[[Any, Record], str],
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n, kind in enumerate(["user", "order", "user"]):
            stream.put(shard, "INSERT", {"kind": kind, "id": n})
        async with client.pubsub() as pubsub:
            await subscribed(pubsub, pattern="changes:*")
            sink = redis_sink(redis_url, action="publish", channel=channel)
            await fs.Pipeline(stream).map(lambda r: str(r.keys["id"])).to(sink).run(drain=True)
            messages = await receive(pubsub, 3)
        assert messages == [("changes:user", b"0"), ("changes:order", b"1"), ("changes:user", b"2")]


class TestFailures:
    async def test_connection_refused_is_retried_then_stops_the_shards(self) -> None:
        port = closed_port()
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(3)]
        for n in range(9):
            stream.put(shards[n % 3], "REMOVE", {"pk": str(n)})
        sink = redis_sink(f"redis://127.0.0.1:{port}/0", key="user:{pk}")

        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).to(sink))

        report = caught.value.report
        for shard in shards:
            stats = report.shards[shard]
            assert stats.stopped_at == stream.records(shard)[0].sequence_number
            assert stats.retries == 2  # retryable: the policy's retries were used
            assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in (stats.error or "")
            assert f"connecting to 127.0.0.1:{port}" in (stats.error or "")
        assert report.delivered == 0

    async def test_a_server_that_does_not_answer_times_out_retryably(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        record = stream.put(shard, "REMOVE", {"pk": "a"})
        # A socket that takes connections (the kernel's backlog) but never replies.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            sink = redis_sink(f"redis://127.0.0.1:{port}/0", timeout=0.2)
            async with sink.open() as writer:
                with pytest.raises(DeliveryError) as caught:
                    await writer.send(Batch(shard, [record], [record]))
        assert caught.value.retryable
        assert f"Redis at redis://127.0.0.1:{port}/0 did not answer within 0.2 s" in str(
            caught.value
        )

    async def test_a_refused_command_fails_that_item_only_and_is_not_retried(
        self, redis_server: Any, client: aioredis.Redis
    ) -> None:
        # A user that may only touch user:* keys: DEL admin:1 is refused with NOPERM.
        await client.acl_setuser(
            "cache", enabled=True, passwords=["+s3cret"], keys=["user:*"], commands=["+@all"]
        )
        stream = MemoryStream()
        bad, good = stream.add_shard(), stream.add_shard()
        for pk in ["user:1", "admin:1", "user:2"]:
            await client.set(pk, "cached")
            stream.put(bad, "REMOVE", {"pk": pk})
        for pk in ["user:3", "user:4"]:
            await client.set(pk, "cached")
            stream.put(good, "REMOVE", {"pk": pk})

        url = f"redis://cache:s3cret@127.0.0.1:{redis_server.port}/0"
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).to(redis_sink(url, key="{pk}")))

        report = caught.value.report
        stats = report.shards[bad]
        assert stats.stopped_at == stream.records(bad)[1].sequence_number
        assert stats.checkpoint == stream.records(bad)[0].sequence_number
        assert stats.retries == 0
        assert "refused DEL of key 'admin:1': NOPERM" in (stats.error or "")
        assert "s3cret" not in str(caught.value)
        assert report.shards[good].stopped_at is None
        # user:2 went out in the same pipeline (Redis runs a pipeline to its end); the
        # shard resumes at admin:1 next time, and replays user:2 after it.
        assert await keys_left(client) == {"admin:1"}

    async def test_after_a_retryable_refusal_the_rest_is_sent_again_after_it(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        # SET is refused while Redis is out of memory; the DEL after it is not. Were
        # only the SET retried, it would land after the DEL and resurrect a stale value.
        stream = MemoryStream()
        shard = stream.add_shard()
        upsert = stream.put(shard, "INSERT", {"pk": "a"}, {"v": 1})
        remove = stream.put(shard, "REMOVE", {"pk": "a"}, old_image={"v": 1})
        other = stream.put(shard, "INSERT", {"pk": "b"}, {"v": 2})
        batch = Batch(shard, [{"v": 1}, None, {"v": 2}], [upsert, remove, other])
        sink = redis_sink(redis_url, action="set", key="{pk}")

        async with sink.open() as writer:
            await client.config_set("maxmemory", 1)
            result = await writer.send(batch)
            assert result is not None
            assert sorted(result.failed) == [0, 1, 2]
            errors = result.failed
            assert isinstance(errors[0], DeliveryError)
            assert errors[0].retryable
            assert errors[0].code == "OOM"
            assert all(getattr(errors[i], "retryable", None) is True for i in (1, 2))
            assert "sent again after that item" in str(errors[1])

            await client.config_set("maxmemory", 0)
            assert await writer.send(batch.subset(sorted(result.failed))) is None

        assert await keys_left(client) == {"b"}

    async def test_items_that_cannot_be_sent_fail_alone(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        records = [stream.put(shard, "INSERT", {"pk": pk}) for pk in "abcd"]
        values: list[Any] = ["ok", object(), "ok", "ok"]

        def key(value: Any, record: Record) -> str:
            if record.keys["pk"] == "c":
                raise ValueError("no key for c")
            return str(record.keys["pk"])

        sink = redis_sink(redis_url, action="set", key=key)
        async with sink.open() as writer:
            result = await writer.send(Batch(shard, values, records))
        assert result is not None
        assert sorted(result.failed) == [1, 2]
        assert "cannot serialise a object value" in str(result.failed[1])
        assert "key function key raised on record" in str(result.failed[2])
        assert "ValueError: no key for c" in str(result.failed[2])
        assert not any(getattr(e, "retryable", True) for e in result.failed.values())
        assert await keys_left(client) == {"a", "d"}

    async def test_a_template_naming_a_missing_attribute_stops_the_shard(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "REMOVE", {"id": "1"})
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).to(redis_sink(redis_url, key="user:{pk}")))
        stats = caught.value.report.shards[shard]
        assert stats.retries == 0
        assert "names 'pk', which is not a key attribute" in (stats.error or "")
        assert "(it has 'id')" in (stats.error or "")

    async def test_wrong_password_is_not_retried(
        self, redis_server: Any, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "REMOVE", {"pk": "a"})
        url = f"redis://nobody:wrong@127.0.0.1:{redis_server.port}/0"
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).to(redis_sink(url)))
        stats = caught.value.report.shards[shard]
        assert stats.retries == 0
        assert "refused the credentials" in (stats.error or "")
        assert "wrong" not in (stats.error or "").split("credentials")[0]


class TestConcurrency:
    async def test_many_shards_share_the_pool_and_handle_every_key_once(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream(page_size=100)
        shards = [stream.add_shard() for _ in range(16)]
        for n in range(5000):
            stream.put(shards[n % 16], "INSERT", {"pk": n}, {"n": n})
        before = await client.info("stats")

        sink = redis_sink(redis_url, action="set", key="item:{pk}", max_connections=4)
        report = await fs.Pipeline(stream).map(lambda r: image(r)["n"]).to(sink).run(drain=True)

        assert report.delivered == 5000
        assert await client.dbsize() == 5000
        values = await client.mget([f"item:{n}" for n in range(5000)])
        assert values == [str(n).encode() for n in range(5000)]
        commands = await client.info("commandstats")
        assert commands["cmdstat_set"]["calls"] == 5000  # each key set once, no replays
        after = await client.info("stats")
        opened = after["total_connections_received"] - before["total_connections_received"]
        assert 1 <= opened <= 4
        # the pool is closed when the run ends
        await wait_until_async(lambda: connections(client), 1)

    async def test_a_cancelled_run_closes_its_connections(
        self, redis_url: str, client: aioredis.Redis
    ) -> None:
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(4)]
        for n in range(40):
            await client.set(f"user:{n}", "cached")
            stream.put(shards[n % 4], "REMOVE", {"pk": n})
        sink: Sink = redis_sink(redis_url, key="user:{pk}")
        pipeline = fs.Pipeline(stream).to(sink)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run)  # live: runs until cancelled
            await wait_until_async(lambda: client.dbsize(), 0)
            assert await connections(client) > 1
            tg.cancel_scope.cancel()
        await wait_until_async(lambda: connections(client), 1)


async def wait_until_async(read: Callable[[], Any], expected: int) -> None:
    """Poll a reading of the server until it equals `expected`; fail the test after 10 s.
    (The server notices closed connections on its own time: there is no event to wait.)"""
    with anyio.fail_after(10):
        while await read() != expected:  # noqa: ASYNC110 - polling another process
            await anyio.sleep(0.005)
