"""The conformance suite, run on the example third-party backend.

examples/backend/dict_backend.py implements only the four methods of
`SyncBackend`. The protocol and primitive tests of test_conformance.py run on
it unchanged (this module overrides the `backend_case` fixture); tests of an
optional capability skip, and the fencing tokens are None.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration import test_conformance as suite
from tests.integration.conftest import BackendCase

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _load_example() -> type:
    path = ROOT / "examples" / "backend" / "dict_backend.py"
    spec = importlib.util.spec_from_file_location("dict_backend_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    backend_class: type = module.DictSyncBackend
    return backend_class


DictSyncBackend = _load_example()


@pytest.fixture
async def backend_case() -> AsyncIterator[BackendCase]:
    """The example backend, entered (one process: `make` returns the same)."""
    backend = DictSyncBackend()
    async with backend:
        yield BackendCase(
            kind="dict-example",
            backend=backend,
            ttl=0.25,
            slack=0.0,
            make=lambda: backend,
        )


# The suite's tests, collected again here with this module's fixture.
_SUITE = [
    "test_acquire_free_lock",
    "test_other_token_is_rejected",
    "test_same_token_extends",
    "test_same_token_can_shorten_the_lease",
    "test_release_by_owner_only",
    "test_release_of_a_free_lock",
    "test_expiry",
    "test_names_are_independent",
    "test_any_name_and_token_works",
    "test_concurrent_acquire_has_one_winner",
    "test_primitive_namespaces_do_not_collide",
    "test_lock_end_to_end",
    "test_lock_release_not_owned",
    "test_lock_lease_expires_when_holder_dies",
    "test_lock_from_thread",
    "test_task_lock_keeps_min_lock_seconds",
    "test_task_lock_released_after_min_lock_seconds",
    "test_task_lock_expires_after_max_lock_seconds",
    "test_leader_election_takeover_on_cancel",
    "test_leader_renews_beyond_its_lease",
    "test_two_managers_run_a_locked_task_at_most_once_per_interval",
]
for _name in _SUITE:
    globals()[_name] = getattr(suite, _name)


async def test_tokens_are_none_without_the_capability(
    backend_case: BackendCase,
) -> None:
    from grelmicro.sync import Lock, TaskLock
    from grelmicro.sync.abc import FencingBackend

    backend = backend_case.backend
    assert not isinstance(backend, FencingBackend)
    lock = Lock("fence-less", backend=backend)
    async with lock:
        assert await lock.owned()
        assert lock.fencing_token is None
    task_lock = TaskLock("fence-less", backend=backend, min_lock_seconds=0.01)
    async with task_lock:
        assert task_lock.fencing_token is None


def test_example_runs() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "backend" / "dict_backend.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "held: True fencing token: None" in done.stdout
    assert "released: True" in done.stdout
