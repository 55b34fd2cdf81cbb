"""Every Python snippet of the documentation site runs.

The site's pages hold no inline Python: each snippet is a file under
``docs/snippets/`` (or ``examples/``), included with pymdownx.snippets
(``--8<-- "docs/snippets/x.py"``). This module runs each file as a
subprocess, as a reader would, against the session's real Redis and NATS
servers (``REDIS_URL`` / ``NATS_URL`` from the fixtures), and checks that:

- a snippet that ends by itself exits 0 within 20 s and prints what it
  promises;
- a service snippet (`asyncio.run(app.run())`) prints what its tasks promise,
  then stops on SIGTERM, as in production, with exit status 0, all within
  20 s;
- nothing is logged at ERROR and no traceback is printed;
- every page includes only snippets listed here, and no page has an inline
  Python block that would escape these runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
LIMIT = 20.0  # seconds, per snippet


@dataclass(frozen=True)
class Snippet:
    """How to run one snippet file and what it must print."""

    needs: tuple[str, ...] = ()  # "redis", "nats"
    serve: bool = False  # a service: stop it with SIGTERM once `expect` is seen
    expect: tuple[str, ...] = ()  # lines (substrings) it must print on stdout


SPECS: dict[str, Snippet] = {
    # Services: run like `python app.py`, stopped with SIGTERM.
    "quickstart_nats.py": Snippet(("nats",), serve=True, expect=("catalog synced",)),
    "quickstart_redis.py": Snippet(("redis",), serve=True, expect=("catalog synced",)),
    "faststream_nats_service.py": Snippet(
        ("nats",),
        serve=True,
        expect=("products synced", "index rebuilt", "ledger reconciled", "report sent"),
    ),
    "faststream_redis_service.py": Snippet(
        ("redis",),
        serve=True,
        expect=("products synced", "index rebuilt", "ledger reconciled", "report sent"),
    ),
    "faststream_publish.py": Snippet(("nats",), serve=True, expect=("received",)),
    "brokers_namespaces.py": Snippet(("redis",), serve=True, expect=("invoices sent",)),
    # Programs that end by themselves.
    "faststream_fastapi.py": Snippet(
        ("nats",),
        expect=(
            "{'leader': True}",
            "reconciled by the task",
            "reconciled by a request",
        ),
    ),
    "faststream_fastapi_own_broker.py": Snippet(
        ("redis",), expect=("rates refreshed",)
    ),
    "without_faststream.py": Snippet(("redis",), expect=("report built",)),
    "tasks_kinds.py": Snippet(
        expect=("cache refreshed", "catalog synced", "cleaned up", "reports rebuilt")
    ),
    "tasks_depends.py": Snippet(expect=("polling https://example.invalid/feed",)),
    "tasks_router.py": Snippet(expect=("job ran", "1 task(s) in the manager")),
    "sync_lock.py": Snippet(
        expect=(
            "invoices locked: True",
            "owned by this task: True",
            "locked from a worker thread",
        )
    ),
    "sync_tasklock.py": Snippet(
        expect=("exporting\n", "skipped: exported less than 60 s ago")
    ),
    "sync_leader.py": Snippet(
        expect=("leader: True", "doing leader-only work", "after exit, leader: False")
    ),
    "sync_custom_backend.py": Snippet(
        expect=("held through the custom backend: True", "released: True")
    ),
    "backends_redis.py": Snippet(("redis",), expect=("held billing:lock:invoices",)),
    "backends_nats.py": Snippet(
        ("nats",),
        expect=("held lock:invoices in the bucket billing-locks", "locked: False"),
    ),
    "backends_cluster.py": Snippet(expect=("built: RedisSyncBackend",)),
}

# Included from examples/: these run in tests/integration/test_examples.py.
EXAMPLES_TESTED_ELSEWHERE = {
    "examples/faststream/nats_app.py",
    "examples/faststream/redis_app.py",
    "examples/faststream/fastapi_app.py",
    "examples/faststream/demo_worker.py",
}

INCLUDE = re.compile(r"""--8<--\s+["']([^"':]+)(?::[^"']*)?["']""")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if SNIPPETS not in p.parents)


def included_files() -> set[str]:
    found: set[str] = set()
    for page in [*pages(), ROOT / "README.md"]:
        found.update(INCLUDE.findall(page.read_text(encoding="utf-8")))
    return found


def inline_python_blocks(text: str) -> list[int]:
    """Line numbers of ```python blocks whose body is not only snippet includes."""
    bad: list[int] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, lang, start = match["fence"], match["lang"].lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i].strip())
            i += 1
        i += 1
        code = [line for line in body if line]
        if lang in ("python", "py", "pycon") and not all(
            line.startswith("--8<--") for line in code
        ):
            bad.append(start + 1)
    return bad


def test_every_page_snippet_is_a_tested_file() -> None:
    for page in pages():
        bad = inline_python_blocks(page.read_text(encoding="utf-8"))
        assert not bad, f"{page.relative_to(ROOT)}: inline Python at lines {bad}"
    files = included_files()
    python = {f for f in files if f.endswith(".py")}
    assert python, "no page includes a snippet"
    for path in sorted(files):
        assert (ROOT / path).is_file(), f"included file missing: {path}"
    for path in sorted(python):
        if path.startswith("docs/snippets/"):
            assert Path(path).name in SPECS, f"{path} is included but never run"
        else:
            assert path in EXAMPLES_TESTED_ELSEWHERE, f"{path} is never run"
    on_disk = {p.name for p in SNIPPETS.glob("*.py")}
    assert on_disk == set(SPECS), (
        f"snippets without a run: {sorted(on_disk - set(SPECS))}; "
        f"runs without a file: {sorted(set(SPECS) - on_disk)}"
    )


def test_the_checker_finds_inline_python() -> None:
    page = 'text\n\n```python\nprint("hi")\n```\n\n```python\n--8<-- "a.py"\n```\n'
    assert inline_python_blocks(page) == [3]


class Output:
    """A subprocess's output, read on a thread so that the pipe never fills."""

    def __init__(self, stream: object) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._lock:
                self.text += line

    def has_all(self, expect: tuple[str, ...]) -> bool:
        with self._lock:
            return all(e in self.text for e in expect)

    def join(self) -> str:
        self._thread.join(timeout=5)
        return self.text


def run_snippet(name: str, spec: Snippet, env: dict[str, str]) -> None:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NATS_URL")
    }
    environ.update(env, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(SNIPPETS / name)],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = Output(process.stdout), Output(process.stderr)
    try:
        if spec.serve:
            while not out.has_all(spec.expect) and process.poll() is None:
                if time.monotonic() - started > LIMIT - 3:
                    break
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=max(0.1, LIMIT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stdout, stderr = out.join(), err.join()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    elapsed = time.monotonic() - started
    detail = f"\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert code is not None, f"{name} did not exit within {LIMIT:g}s{detail}"
    assert code == 0, f"{name} exited with {code}{detail}"
    assert elapsed < LIMIT, f"{name} took {elapsed:.1f}s{detail}"
    for expected in spec.expect:
        assert expected in stdout, f"{name} did not print {expected!r}{detail}"
    assert "Traceback" not in stderr, f"{name} printed a traceback{detail}"
    assert " ERROR " not in stderr, f"{name} logged an error{detail}"
    assert "error:" not in stderr.lower(), f"{name} logged an error{detail}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_snippet_runs(name: str, request: pytest.FixtureRequest) -> None:
    spec = SPECS[name]
    env: dict[str, str] = {}
    if "redis" in spec.needs:
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    if "nats" in spec.needs:
        env["NATS_URL"] = request.getfixturevalue("nats_url")
    run_snippet(name, spec, env)


def load_readme_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_readme", ROOT / "scripts" / "docs_readme.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_examples_are_copies_of_tested_snippets() -> None:
    tool = load_readme_tool()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    refs = [m["ref"] for m in tool.BLOCK.finditer(readme)]
    assert refs, "the README has no example copied from a snippet"
    for ref in refs:
        assert Path(ref.partition(":")[0]).name in SPECS, f"{ref} is never run"
    assert tool.render(readme) == readme, (
        "README.md differs from its snippets: run python scripts/docs_readme.py"
    )
    python_blocks = readme.count("```python")
    assert python_blocks == len(refs), "a README Python block has no snippet marker"


def test_readme_copy_check_can_fail() -> None:
    tool = load_readme_tool()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tampered = readme.replace('print("catalog synced")', 'print("changed")', 1)
    assert tampered != readme
    assert tool.render(tampered) != tampered
