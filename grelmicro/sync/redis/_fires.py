"""Cron fire claims on Redis (`FireClaimBackend`), mixed into the backend.

Per task key ``K``: the high-water mark is the field ``fire`` of ``K``'s
fencing hash (persistent, beside the fencing counter it shares with the
name's locks); each leased fire has its own lease key, expiring on the
server, which holds the completed marker ('') once the fire is finished.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

import anyio

from grelmicro.sync._fire_args import check_after, check_fire
from grelmicro.sync.abc import FIRE_BEHIND, FireRetake
from grelmicro.sync.errors import SyncBackendError
from grelmicro.sync.redis import _scripts as scripts
from grelmicro.sync.redis._config import check_claimant, milliseconds
from grelmicro.sync.redis._errors import Unacknowledged
from grelmicro.sync.redis._keys import fire_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from typing_extensions import Doc

    from grelmicro.sync.redis._connection import RedisClient

#: Seconds a completed leased fire stays known as completed (its lease key
#: holds the completed marker), so that workers watching it stop.
FIRE_DONE_RETENTION = 60.0


class FireClaims:
    """The `FireClaimBackend` operations; each is one atomic script."""

    _prefix: str

    if TYPE_CHECKING:

        async def _call(
            self,
            operation: str,
            name: str,
            send: Callable[[RedisClient], Awaitable[Any]],
        ) -> Any: ...

        async def _eval(
            self,
            operation: str,
            name: str,
            script: scripts.Script,
            keys: tuple[str, ...],
            *args: str | int,
            replicated: bool = False,
        ) -> int: ...

        def _keys(self, name: str) -> tuple[str, str]: ...

        async def _give_back(
            self, exc: Unacknowledged, operation: str, name: str, token: str
        ) -> None: ...

    # Cron fire claims ----------------------------------------------------------

    async def last_fire(
        self, *, name: Annotated[str, Doc("The task key.")]
    ) -> int | None:
        """The latest fire claimed for `name`; None when none was ever claimed."""
        _key, fence = self._keys(name)
        value = await self._call(
            "last_fire", name, lambda client: client.hget(fence, "fire")
        )
        return None if value is None else int(value)

    async def claim_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[
            float | None,
            Doc("None: the claim is final; else a lease of that many seconds."),
        ],
        after: Annotated[
            int | None,
            Doc(
                "The fire before `fire` that must be claimed first (ms); "
                "None: `fire` may pass over unclaimed fires."
            ),
        ] = None,
    ) -> int | None:
        """Claim `fire` if it is later than every fire claimed before for `name`.

        One script: compare with the name's high-water mark (and with
        `after`: `FIRE_BEHIND` when the mark is older), move it, issue a
        fencing token from the name's counter and, with `lease`, write the
        fire's lease key (expiring on the server).
        """
        check_fire(fire)
        checked_after = check_after(after, fire)
        check_claimant(token)
        ms = "" if lease is None else milliseconds(lease, "lease")
        key, fence = self._keys(name)
        try:
            answer = await self._eval(
                "claim_fire",
                name,
                scripts.CLAIM_FIRE_SCRIPT,
                (fence, fire_key(key, self._prefix, fire)),
                fire,
                token,
                ms,
                "" if checked_after is None else checked_after,
                replicated=True,
            )
        except Unacknowledged as exc:
            # The claim cannot be given back (the fire would run twice):
            # report it; the fire is lost on this worker unless it is leased.
            exc.answer = 0
            await self._give_back(exc, "claim_fire", name, token)
            raise  # pragma: no cover
        if answer == -1:
            return FIRE_BEHIND
        return answer if answer > 0 else None

    async def keep_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
        lease: Annotated[float, Doc("The new lease in seconds, from now.")],
    ) -> bool:
        """Extend the lease on `fire`; False when `token` no longer holds it."""
        check_fire(fire)
        check_claimant(token)
        ms = milliseconds(lease, "lease")
        lease_key = fire_key(self._prefix + name, self._prefix, fire)
        return (
            await self._eval(
                "keep_fire", name, scripts.KEEP_FIRE_SCRIPT, (lease_key,), token, ms
            )
            == 1
        )

    async def finish_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The claimant's token.")],
    ) -> bool:
        """Mark a leased fire completed: it is never run again, the lease ends.

        The lease key then holds the completed marker for
        `FIRE_DONE_RETENTION` seconds. False when `token` no longer holds it.
        """
        check_fire(fire)
        check_claimant(token)
        lease_key = fire_key(self._prefix + name, self._prefix, fire)
        retention = milliseconds(FIRE_DONE_RETENTION)
        return (
            await self._eval(
                "finish_fire",
                name,
                scripts.FINISH_FIRE_SCRIPT,
                (lease_key,),
                token,
                retention,
            )
            == 1
        )

    async def retake_fire(
        self,
        *,
        name: Annotated[str, Doc("The task key.")],
        fire: Annotated[int, Doc("The fire time, ms since the Unix epoch.")],
        token: Annotated[str, Doc("The new claimant's token.")],
        lease: Annotated[float, Doc("The lease in seconds.")],
    ) -> FireRetake:
        """Take over a leased fire whose claimant's lease lapsed unfinished."""
        check_fire(fire)
        check_claimant(token)
        ms = milliseconds(lease, "lease")
        key, fence = self._keys(name)
        lease_key = fire_key(key, self._prefix, fire)
        try:
            answer = await self._eval(
                "retake_fire",
                name,
                scripts.RETAKE_FIRE_SCRIPT,
                (fence, lease_key),
                fire,
                token,
                ms,
                replicated=True,
            )
        except Unacknowledged as exc:
            if exc.answer > 0:  # give the lease back: it may come back to us
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(SyncBackendError):
                        await self._eval(
                            "retake_fire",
                            name,
                            scripts.RELEASE_SCRIPT,
                            (lease_key,),
                            token,
                        )
            exc.answer = 0
            await self._give_back(exc, "retake_fire", name, token)
            raise  # pragma: no cover
        if answer == -1:
            return FireRetake(None, done=True)
        return FireRetake(answer if answer > 0 else None, done=False)
