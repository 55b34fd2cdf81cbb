"""The Lua scripts of the Redis backend: one atomic round trip per operation.

Keys (see `_keys`): ``K`` the lock key (a string holding the owner's token,
with a ``PX`` expiry), ``F`` its fencing hash (persistent; fields ``last``,
``held``, ``fire``), ``L`` the lease key of one leased cron fire.
"""

from __future__ import annotations

import hashlib

# KEYS = K, F; ARGV = token, lease ms.
# A fresh acquisition increments F.last and records it as F.held: the answer
# is that fencing token (>= 1). An extension answers F.held unchanged. When
# another token holds K: -(its lease left in ms, >= 1), or 0 when K has no
# expiry. Used by acquire, acquire_or_remaining and acquire_fenced alike, so
# every fresh acquisition consumes a token.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    local held = tonumber(redis.call('HGET', KEYS[2], 'held'))
    if held then
        return held
    end
elseif holder then
    local left = redis.call('PTTL', KEYS[1])
    if left < 0 then
        return 0
    end
    if left == 0 then
        return -1
    end
    return -left
else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local fence = redis.call('HINCRBY', KEYS[2], 'last', 1)
redis.call('HSET', KEYS[2], 'held', fence)
return fence
"""

# KEYS = K; ARGV = token, release channel (optional). 1 when released, 0
# otherwise. With a channel, a release is published on it (the message is
# K): waiters subscribed to it learn of it at once (see `_watch`).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    if ARGV[2] and ARGV[2] ~= '' then
        -- pcall: a user whose ACL forbids the channel still releases.
        redis.pcall('PUBLISH', ARGV[2], KEYS[1])
    end
    return 1
end
return 0
"""

# KEYS = K; ARGV = token. 1 when the token holds the lock.
OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return 1
end
return 0
"""

# KEYS = F, L; ARGV = fire ms, token, lease ms ('' for a final claim),
# after ms ('' for none). The new fencing token when `fire` is later than
# F.fire; else 0; -1 when F.fire is older than `after` (claim it first).
CLAIM_FIRE = """
local last = tonumber(redis.call('HGET', KEYS[1], 'fire'))
if last then
    if tonumber(ARGV[1]) <= last then
        return 0
    end
    if ARGV[4] ~= '' and last < tonumber(ARGV[4]) then
        return -1
    end
end
redis.call('HSET', KEYS[1], 'fire', ARGV[1])
local fence = redis.call('HINCRBY', KEYS[1], 'last', 1)
if ARGV[3] ~= '' then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return fence
"""

# KEYS = L; ARGV = token, lease ms. 1 when kept.
KEEP_FIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# KEYS = L; ARGV = token, retention ms. 1 when marked completed: the lease
# key then holds '' (no claimant has an empty token) for the retention.
FINISH_FIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], '', 'PX', ARGV[2])
    return 1
end
return 0
"""

# KEYS = F, L; ARGV = fire ms, token, lease ms.
# -1 when the fire was completed, 0 while it is leased (or was never
# claimed), else the new fencing token of the takeover.
RETAKE_FIRE = """
local lease = redis.call('GET', KEYS[2])
if lease then
    if lease == '' then
        return -1
    end
    return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'fire'))
if not last or tonumber(ARGV[1]) > last then
    return 0
end
local fence = redis.call('HINCRBY', KEYS[1], 'last', 1)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return fence
"""


class Script:
    """A Lua script and its SHA1 (run with EVALSHA, EVAL on NOSCRIPT)."""

    __slots__ = ("keys", "sha", "source")

    def __init__(self, source: str, keys: int) -> None:
        self.source = source
        self.keys = keys
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


ACQUIRE_SCRIPT = Script(ACQUIRE, 2)
RELEASE_SCRIPT = Script(RELEASE, 1)
OWNED_SCRIPT = Script(OWNED, 1)
CLAIM_FIRE_SCRIPT = Script(CLAIM_FIRE, 2)
KEEP_FIRE_SCRIPT = Script(KEEP_FIRE, 1)
FINISH_FIRE_SCRIPT = Script(FINISH_FIRE, 1)
RETAKE_FIRE_SCRIPT = Script(RETAKE_FIRE, 2)
