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
- every snippet a page includes, and every file under docs/snippets/, is
  run here or by another test module (the examples have their own), and no
  page has an inline Python block that would escape these runs (a one-line
  import block is allowed, and run).
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
    limit: float = LIMIT  # seconds; only generators of pictures get more


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
    "backends_redis.py": Snippet(("redis",), expect=("held billing:lock:invoices",)),
    "backends_nats.py": Snippet(
        ("nats",),
        expect=("held lock:invoices in the bucket billing-locks", "locked: False"),
    ),
    "backends_cluster.py": Snippet(expect=("built: RedisSyncBackend",)),
    "redis_topologies.py": Snippet(expect=("built: RedisSyncBackend",)),
    # From the cron page (they land with the cron work).
    "cron_quickstart.py": Snippet(expect=("fire ", "token ")),
    "cron_fencing.py": Snippet(expect=("exported fire", "'last-export'")),
    # Not on a page: it draws docs/img/cron_fire_life.svg (make docs-images).
    "cron_timeline.py": Snippet(expect=("retake",), limit=45.0),
}

# Files run by a file that a test runs (so no test names them).
RUN_THROUGH = {"examples/faststream/demo_worker.py": "examples/faststream/demo.py"}


def other_tests() -> list[str]:
    """The source of every test module but this one."""
    here = Path(__file__).resolve()
    return [
        p.read_text(encoding="utf-8")
        for p in (ROOT / "tests").rglob("*.py")
        if p.resolve() != here
    ]


def run_elsewhere(path: str, sources: list[str]) -> bool:
    """Whether another test module runs `path` (it names the file and its folder)."""
    if path in RUN_THROUGH:
        parent = RUN_THROUGH[path]
        text = (ROOT / parent).read_text(encoding="utf-8")
        return Path(path).name in text and run_elsewhere(parent, sources)
    file = Path(path)
    return any(
        path in text or (file.stem in text and file.parent.name in text)
        for text in sources
    )


INCLUDE = re.compile(r"""--8<--\s+["']([^"':]+)(?::[^"']*)?["']""")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if SNIPPETS not in p.parents)


def included_files() -> set[str]:
    found: set[str] = set()
    for page in [*pages(), ROOT / "README.md"]:
        found.update(INCLUDE.findall(page.read_text(encoding="utf-8")))
    return found


def import_lines(code: list[str]) -> bool:
    """Whether a block is only import statements (a page's one-line import)."""
    return bool(code) and all(
        line.startswith(("import ", "from ")) and " import " in f" {line}"
        for line in code
    )


def inline_imports(text: str) -> list[str]:
    """The import-only ```python blocks of a page (run by a test)."""
    return [
        "\n".join(block)
        for block in python_blocks(text).values()
        if import_lines([line for line in block if line])
    ]


def python_blocks(text: str) -> dict[int, list[str]]:
    """Every ```python block of a page: its first line number -> its lines."""
    blocks: dict[int, list[str]] = {}
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
        if lang in ("python", "py", "pycon"):
            blocks[start + 1] = body
    return blocks


def inline_python_blocks(text: str) -> list[int]:
    """Line numbers of ```python blocks that are neither includes nor imports."""
    bad: list[int] = []
    for start, body in python_blocks(text).items():
        code = [line for line in body if line]
        if all(line.startswith("--8<--") for line in code) or import_lines(code):
            continue
        bad.append(start)
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
    sources = other_tests()
    on_disk = {f"docs/snippets/{p.name}" for p in SNIPPETS.glob("*.py")}
    for path in sorted(python | on_disk):
        if path.startswith("docs/snippets/") and Path(path).name in SPECS:
            continue  # run below
        assert run_elsewhere(path, sources), f"{path} is never run by a test"


def test_the_coverage_check_can_fail() -> None:
    sources = other_tests()
    assert run_elsewhere("examples/faststream/nats_app.py", sources)
    assert run_elsewhere("examples/faststream/demo_worker.py", sources)
    assert not run_elsewhere("docs/snippets/no_such_snippet.py", sources)


def test_the_checker_finds_inline_python() -> None:
    page = 'text\n\n```python\nprint("hi")\n```\n\n```python\n--8<-- "a.py"\n```\n'
    assert inline_python_blocks(page) == [3]
    imports = "```python\nfrom grelmicro.task import TaskManager\n```\n"
    assert inline_python_blocks(imports) == []
    assert inline_imports(imports) == ["from grelmicro.task import TaskManager"]


def test_inline_imports_on_the_pages_work() -> None:
    blocks = [code for page in pages() for code in inline_imports(page.read_text())]
    if not blocks:
        pytest.skip("no page has an import-only block")
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


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
                if time.monotonic() - started > spec.limit - 3:
                    break
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=max(0.1, spec.limit - (time.monotonic() - started)))
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
    assert code is not None, f"{name} did not exit within {spec.limit:g}s{detail}"
    assert code == 0, f"{name} exited with {code}{detail}"
    assert elapsed < spec.limit, f"{name} took {elapsed:.1f}s{detail}"
    for expected in spec.expect:
        assert expected in stdout, f"{name} did not print {expected!r}{detail}"
    assert "Traceback" not in stderr, f"{name} printed a traceback{detail}"
    assert " ERROR " not in stderr, f"{name} logged an error{detail}"
    assert "error:" not in stderr.lower(), f"{name} logged an error{detail}"


@pytest.mark.parametrize("name", sorted(n for n in SPECS if (SNIPPETS / n).is_file()))
def test_snippet_runs(name: str, request: pytest.FixtureRequest) -> None:
    spec = SPECS[name]
    env: dict[str, str] = {}
    if "redis" in spec.needs:
        env["REDIS_URL"] = request.getfixturevalue("docs_redis_url")
    if "nats" in spec.needs:
        env["NATS_URL"] = request.getfixturevalue("docs_nats_url")
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
