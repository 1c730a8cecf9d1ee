"""RedisStore specifics: a list reads the job index in batches, and a delete leaves no
key or index entry of the job behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from procgate import JobStatus
from procgate.jobs import Chunk, Outcome
from procgate.stores import redis as redis_store
from procgate.stores.redis import RedisStore
from tests.stores.test_contract import new_job


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    made = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:", evict_interval=0)
    yield made
    made.close()


def test_a_filtered_list_says_more_when_the_next_match_is_in_the_next_batch(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that is full at the end of one batch still reads the next batch, to say
    whether another match follows: the cursor is given only then."""
    monkeypatch.setattr(redis_store, "LIST_BATCH", 2)
    old = store.create(new_job("a"))
    store.create(new_job("b"))
    store.create(new_job("b"))
    new = store.create(new_job("a"))
    page = store.list(command="a", limit=1)
    assert [job.id for job in page.jobs] == [new.id]
    assert page.next is not None
    rest = store.list(command="a", limit=1, cursor=page.next)
    assert ([job.id for job in rest.jobs], rest.next) == ([old.id], None)


def test_a_delete_leaves_nothing_of_the_job(store: RedisStore) -> None:
    """After a delete no key names the job (its hash, output and end streams, its
    idempotency key) and no index holds it; only the creation count for rate limits
    stays, as documented."""
    job = store.create(new_job(key="k1"))
    store.start(job.id)
    store.append_output(job.id, Chunk(1, "stdout", 0, b"out"))
    store.finish(job.id, Outcome(JobStatus.SUCCEEDED, 0))
    client = store.redis

    def keys() -> list[str]:
        found = (key.decode() for key in client.scan_iter(match=f"{store.prefix}*"))
        return sorted(key for key in found if job.id in key or ":idem:" in key)

    assert len(keys()) == 4  # job, out, end, idem
    assert store.delete(job.id) is True
    assert keys() == []
    for name in ("jobs", "done", "finished"):
        assert client.zscore(store._key(name), job.id) is None
    assert client.zscore(store._key("created"), job.id) is not None
