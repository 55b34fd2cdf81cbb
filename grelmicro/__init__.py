"""grelmicro: interval tasks, locks and leader election for FastStream services.

Coordinate periodic jobs across the replicas of a service through the broker it
already runs (Redis or NATS JetStream KV), inside the application's lifespan.
"""

from grelmicro.errors import GrelmicroError

__version__ = "0.7.0"

__all__ = ["GrelmicroError", "__version__"]
