"""Outgrowing one server: a replicated NATS bucket, Redis Sentinel or Cluster.

Building these backends opens no connection, so this file runs anywhere; a
first lock call needs the servers named here.
"""

from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import Sentinel

from grelmicro.sync.nats import NatsSyncBackend
from grelmicro.sync.redis import RedisSyncBackend

# --8<-- [start:nats]
backend = NatsSyncBackend("nats://n1:4222,nats://n2:4222,nats://n3:4222", replicas=3)
# --8<-- [end:nats]

# --8<-- [start:redis]
# Sentinel: the client follows the current primary.
primary = Sentinel([("sentinel-1", 26379), ("sentinel-2", 26379)]).master_for(
    "mymaster"
)
backend = RedisSyncBackend(client=primary)

# Cluster: each lock lives in its key's hash slot, on one shard.
backend = RedisSyncBackend(client=RedisCluster.from_url("redis://node-1:6379"))
# --8<-- [end:redis]

if __name__ == "__main__":
    print("built:", type(backend).__name__)
