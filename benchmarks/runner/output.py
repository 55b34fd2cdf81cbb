"""What a run writes: the JSON, the markdown tables, the plot, and the
generated part of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from runner.common import log
from runner.envs import BENCH_DIR, REPO, Env, clean_env
from runner.report import markdown_report

PUBLISHED = BENCH_DIR / "results" / "latest.json"
PUBLISHED_PNG = REPO / "docs" / "img" / "benchmarks.png"
DOCS = REPO / "docs" / "benchmarks.md"


def _version_of(argv: list[str]) -> str:
    with contextlib.suppress(OSError):
        return subprocess.run(
            argv, capture_output=True, text=True, check=False
        ).stdout.strip()
    return ""


def machine_info(nats_bin: str | None, project: Env) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    commit = _version_of(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version_of(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "grelmicro"]
    )
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": _version_of(["nproc"]),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": _version_of(
            [str(project.python), "-c", "import sys; print(sys.version.split()[0])"]
        ),
        "redis_server": _version_of(["redis-server", "--version"]),
        "nats_server": _version_of([nats_bin, "--version"]) if nats_bin else "",
        "commit": commit + ("+dirty" if dirty else ""),
    }


def scrub(value: Any) -> Any:
    """The results without this machine's directories (they get committed)."""
    if isinstance(value, str):
        value = re.sub(r"(?:/[^\s/\"']+)+/site-packages/", ".../site-packages/", value)
        return value.replace(str(REPO), "<repo>").replace(str(Path.home()), "~")
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def plot(results: Path, png: Path, tools: Env | None) -> str | None:
    """Draw the PNG with matplotlib from the tools environment; None if done."""
    if tools is None or tools.python is None:
        return f"no plot: {tools.error if tools else 'tools environment not requested'}"
    png.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            str(tools.python),
            str(BENCH_DIR / "runner" / "plot.py"),
            str(results),
            str(png),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        return f"no plot: {done.stderr.strip().splitlines()[-1:]}"
    return None


def update_docs(markdown: str, docs: Path = DOCS) -> None:
    """Replace the generated part of docs/benchmarks.md with the new tables."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if not docs.exists():
        return
    text = docs.read_text()
    if start not in text or end not in text:
        return
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    docs.write_text(f"{head}{start}\n{markdown.strip()}\n{end}{tail}")


def default_png(out: Path) -> Path:
    """The published plot for the published results, else next to `out`."""
    return (
        PUBLISHED_PNG
        if out.resolve() == PUBLISHED.resolve()
        else out.with_suffix(".png")
    )


def publish(output: dict[str, Any], out: Path, png: Path, tools: Env | None) -> None:
    """Write the JSON (unless it is the input of --render), the markdown and
    the plot; a complete full run written to the published path also
    updates the docs (never a smoke run, or one with --only or --no-peers)."""
    markdown = markdown_report(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or json.loads(out.read_text()) != output:
        out.write_text(json.dumps(output, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    problem = plot(out, png, tools)
    if problem:
        log(problem)
    complete = output.get("mode") == "full" and not output.get("partial")
    if out.resolve() == PUBLISHED.resolve() and complete:
        update_docs(markdown)
    log(f"wrote {out}, {out.with_suffix('.md')}" + ("" if problem else f", {png}"))
