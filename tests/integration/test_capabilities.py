"""Conformance of the optional backend capabilities (grelmicro.sync.abc).

Every built-in backend (memory, Redis, NATS) implements every capability; each
test runs once per backend, on a fresh namespace, and checks the contract the
protocol's docstring states: fencing tokens and cron fire claims.
"""

from __future__ import annotations

import time
from uuid import uuid4

import anyio
import pytest

from grelmicro.sync.abc import (
    FIRE_BEHIND,
    FencingBackend,
    FireClaimBackend,
    ReleaseWatchBackend,
    RemainingBackend,
    SyncBackend,
)
from grelmicro.sync.errors import SyncSettingsValidationError
from tests.integration.conftest import BackendCase, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def name() -> str:
    """A key no other test uses."""
    return f"capability-{uuid4().hex[:8]}"


def fencing(backend: SyncBackend) -> FencingBackend:
    assert isinstance(backend, FencingBackend), f"{backend!r} issues no tokens"
    return backend


def claims(backend: SyncBackend) -> FireClaimBackend:
    assert isinstance(backend, FireClaimBackend), f"{backend!r} has no fire claims"
    return backend


async def test_every_builtin_backend_has_every_capability(
    backend: SyncBackend,
) -> None:
    for capability in (
        FencingBackend,
        FireClaimBackend,
        RemainingBackend,
        ReleaseWatchBackend,
    ):
        assert isinstance(backend, capability), capability.__name__


# Fencing tokens ---------------------------------------------------------------------


async def test_fresh_acquisitions_issue_growing_tokens(backend: SyncBackend) -> None:
    fenced, key = fencing(backend), name()
    seen: list[int] = []
    for owner in ("a", "b", "a", "c"):
        answer = await fenced.acquire_fenced(name=key, token=owner, duration=10)
        assert answer.acquired
        assert answer.fence is not None
        assert answer.remaining == 0.0
        seen.append(answer.fence)
        assert await backend.release(name=key, token=owner)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


async def test_extension_keeps_the_token(backend: SyncBackend) -> None:
    fenced, key = fencing(backend), name()
    first = await fenced.acquire_fenced(name=key, token="a", duration=10)
    again = await fenced.acquire_fenced(name=key, token="a", duration=10)
    plain = await backend.acquire(name=key, token="a", duration=10)
    third = await fenced.acquire_fenced(name=key, token="a", duration=10)
    assert plain
    assert first.fence is not None
    assert again.fence == first.fence == third.fence


async def test_busy_answers_no_token_and_the_lease_left(backend: SyncBackend) -> None:
    fenced, key = fencing(backend), name()
    assert (await fenced.acquire_fenced(name=key, token="a", duration=30)).acquired
    busy = await fenced.acquire_fenced(name=key, token="b", duration=10)
    assert not busy.acquired
    assert busy.fence is None
    assert 0 < busy.remaining <= 31


async def test_plain_acquire_also_advances_the_tokens(backend: SyncBackend) -> None:
    # A holder that took the lock with `acquire` (not fenced) still consumed a
    # token: the next fenced holder's token is greater than any before.
    fenced, key = fencing(backend), name()
    first = await fenced.acquire_fenced(name=key, token="a", duration=10)
    assert await backend.release(name=key, token="a")
    assert await backend.acquire(name=key, token="b", duration=10)
    assert await backend.release(name=key, token="b")
    last = await fenced.acquire_fenced(name=key, token="c", duration=10)
    assert first.fence is not None
    assert last.fence is not None
    assert last.fence > first.fence


async def test_a_gap_changes_the_token(backend_case: BackendCase) -> None:
    # The same owner takes the lock again after its lease ran out: that is a
    # fresh acquisition (a new token), not an extension.
    backend, key = backend_case.backend, name()
    fenced = fencing(backend)
    first = await fenced.acquire_fenced(name=key, token="a", duration=backend_case.ttl)
    await wait_for(
        lambda: _free(backend, key),
        backend_case.expiry_deadline(backend_case.ttl),
    )
    second = await fenced.acquire_fenced(name=key, token="a", duration=10)
    assert first.fence is not None
    assert second.fence is not None
    assert second.fence > first.fence


async def _free(backend: SyncBackend, key: str) -> bool:
    return not await backend.locked(name=key)


async def test_tokens_grow_across_backends_on_one_store(
    backend_case: BackendCase,
) -> None:
    # Two backend objects (two "workers") on the same store share the order.
    key = name()
    other = backend_case.make()
    async with other:
        first, second = fencing(backend_case.backend), fencing(other)
        tokens: list[int] = []
        for index in range(6):
            fenced = first if index % 2 == 0 else second
            backend = backend_case.backend if index % 2 == 0 else other
            answer = await fenced.acquire_fenced(
                name=key, token=f"w{index}", duration=10
            )
            assert answer.fence is not None
            tokens.append(answer.fence)
            assert await backend.release(name=key, token=f"w{index}")
    assert tokens == sorted(set(tokens))


async def test_concurrent_fenced_acquire_has_one_winner(backend: SyncBackend) -> None:
    fenced, key = fencing(backend), name()
    answers = []

    async def contend(owner: str) -> None:
        answers.append(await fenced.acquire_fenced(name=key, token=owner, duration=10))

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(contend, f"w{index}")
    winners = [answer for answer in answers if answer.acquired]
    assert len(winners) == 1


# Cron fire claims -------------------------------------------------------------------


def fire_at(offset_s: int = 0) -> int:
    """A fire time in ms since the epoch, on a whole second."""
    return (int(time.time()) + offset_s) * 1000


async def test_each_fire_is_claimed_once(backend: SyncBackend) -> None:
    claim, key = claims(backend), name()
    assert await claim.last_fire(name=key) is None
    fire = fire_at()
    first = await claim.claim_fire(name=key, fire=fire, token="a", lease=None)
    again = await claim.claim_fire(name=key, fire=fire, token="b", lease=None)
    same = await claim.claim_fire(name=key, fire=fire, token="a", lease=None)
    assert first is not None
    assert again is None
    assert same is None
    assert await claim.last_fire(name=key) == fire


async def test_an_older_fire_cannot_be_claimed_after_a_later_one(
    backend: SyncBackend,
) -> None:
    claim, key = claims(backend), name()
    fire = fire_at(2)
    later = await claim.claim_fire(name=key, fire=fire, token="a", lease=None)
    older = await claim.claim_fire(name=key, fire=fire_at(1), token="b", lease=None)
    assert later is not None
    assert older is None
    assert await claim.last_fire(name=key) == fire


async def test_a_claim_after_an_unclaimed_fire_is_behind(backend: SyncBackend) -> None:
    """With `after`, claims stay in order: a claim whose `after` is later
    than the latest claimed fire writes nothing and answers FIRE_BEHIND; the
    fires in between can then be claimed in order."""
    claim, key = claims(backend), name()
    first = fire_at(1)
    # No claim yet: any fire is accepted (the first claim sets the start).
    assert await claim.claim_fire(
        name=key, fire=first, token="a", lease=None, after=fire_at(0)
    )
    # fire_at(2) is not claimed: fire_at(3) cannot pass over it.
    behind = await claim.claim_fire(
        name=key, fire=fire_at(3), token="b", lease=None, after=fire_at(2)
    )
    assert behind == FIRE_BEHIND
    assert await claim.last_fire(name=key) == first  # nothing written
    second = await claim.claim_fire(
        name=key, fire=fire_at(2), token="b", lease=None, after=first
    )
    third = await claim.claim_fire(
        name=key, fire=fire_at(3), token="b", lease=5, after=fire_at(2)
    )
    assert second
    assert third
    assert third > second
    # A fire already claimed is still answered None (not behind).
    assert (
        await claim.claim_fire(
            name=key, fire=fire_at(2), token="c", lease=None, after=fire_at(1)
        )
        is None
    )
    # Without `after`, a claim may pass over unclaimed fires.
    assert await claim.claim_fire(name=key, fire=fire_at(6), token="c", lease=None)


async def test_claim_after_must_be_before_the_fire(backend: SyncBackend) -> None:
    claim, key = claims(backend), name()
    fire = fire_at(1)
    with pytest.raises(SyncSettingsValidationError, match="after must be earlier"):
        await claim.claim_fire(name=key, fire=fire, token="a", lease=None, after=fire)
    with pytest.raises(SyncSettingsValidationError, match="after must be a non-neg"):
        await claim.claim_fire(name=key, fire=fire, token="a", lease=None, after=-1)
    assert await claim.last_fire(name=key) is None


async def test_claims_issue_growing_tokens(backend: SyncBackend) -> None:
    claim, key = claims(backend), name()
    tokens = []
    for offset in range(5):
        token = await claim.claim_fire(
            name=key, fire=fire_at(offset), token=f"w{offset % 2}", lease=None
        )
        assert token is not None
        tokens.append(token)
    assert tokens == sorted(set(tokens))


async def test_concurrent_claims_have_one_winner(backend_case: BackendCase) -> None:
    key, fire = name(), fire_at()
    others = [backend_case.make() for _ in range(2)]
    won: list[int] = []
    async with others[0], others[1]:
        backends = [backend_case.backend, *others]

        async def contend(index: int) -> None:
            claim = claims(backends[index % 3])
            token = await claim.claim_fire(
                name=key, fire=fire, token=f"w{index}", lease=None
            )
            if token is not None:
                won.append(token)

        async with anyio.create_task_group() as tg:
            for index in range(9):
                tg.start_soon(contend, index)
    assert len(won) == 1


async def test_leased_fire_kept_and_finished_is_never_retaken(
    backend_case: BackendCase,
) -> None:
    backend, key, fire = backend_case.backend, name(), fire_at()
    claim = claims(backend)
    lease = backend_case.ttl * 2
    assert await claim.claim_fire(name=key, fire=fire, token="a", lease=lease)
    held = await claim.retake_fire(name=key, fire=fire, token="b", lease=lease)
    assert held.fence is None
    assert not held.done
    assert await claim.keep_fire(name=key, fire=fire, token="a", lease=lease)
    assert not await claim.keep_fire(name=key, fire=fire, token="b", lease=lease)
    assert await claim.finish_fire(name=key, fire=fire, token="a")
    # Past the lease: the completed fire is still known as done.
    await anyio.sleep(lease + backend_case.slack + 0.2)
    done = await claim.retake_fire(name=key, fire=fire, token="b", lease=lease)
    assert done.fence is None
    assert done.done


async def test_leased_fire_of_a_dead_claimant_is_retaken_once(
    backend_case: BackendCase,
) -> None:
    backend, key, fire = backend_case.backend, name(), fire_at()
    claim = claims(backend)
    lease = backend_case.ttl
    first = await claim.claim_fire(name=key, fire=fire, token="dead", lease=lease)
    assert first is not None

    async def retaken() -> bool:
        answer = await claim.retake_fire(name=key, fire=fire, token="b", lease=30)
        assert not answer.done
        if answer.fence is None:
            return False
        assert answer.fence > first
        return True

    await wait_for(retaken, backend_case.expiry_deadline(lease), interval=0.1)
    # Taken over once: a third worker cannot take it again, nor can the dead
    # claimant keep or finish it.
    third = await claim.retake_fire(name=key, fire=fire, token="c", lease=30)
    assert third.fence is None
    assert not await claim.keep_fire(name=key, fire=fire, token="dead", lease=30)
    assert not await claim.finish_fire(name=key, fire=fire, token="dead")
    assert await claim.finish_fire(name=key, fire=fire, token="b")


async def test_an_unclaimed_fire_cannot_be_retaken(backend: SyncBackend) -> None:
    claim, key = claims(backend), name()
    answer = await claim.retake_fire(name=key, fire=fire_at(), token="b", lease=30)
    assert answer.fence is None
    assert not answer.done
