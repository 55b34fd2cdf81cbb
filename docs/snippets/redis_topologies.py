"""Redis Cluster and Sentinel: building the backend, and `wait_replicas`.

Building these backends opens no connection, so this file runs anywhere; a
first lock call needs the servers named here.
"""

from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import Sentinel

from grelmicro.sync.redis import RedisSyncBackend

# --8<-- [start:connecting]
# Redis Cluster, URL form: the backend asks the node (INFO cluster) once and
# builds a cluster client when it is a cluster node.
backend = RedisSyncBackend("redis://node-1:6379")

# Redis Cluster, your own client (borrowed: never closed by the backend).
backend = RedisSyncBackend(client=RedisCluster.from_url("redis://node-1:6379"))

# Sentinel: the client asks the sentinels for the current primary.
sentinel = Sentinel(
    [("sentinel-1", 26379), ("sentinel-2", 26379), ("sentinel-3", 26379)]
)
backend = RedisSyncBackend(client=sentinel.master_for("mymaster"))
# --8<-- [end:connecting]

# --8<-- [start:wait]
backend = RedisSyncBackend("redis://primary:6379", wait_replicas=1, wait_timeout=1.0)
# --8<-- [end:wait]

if __name__ == "__main__":
    print("built:", type(backend).__name__)
