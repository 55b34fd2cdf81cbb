"""Run the benchmarks: ``python benchmarks/run.py`` (``--smoke`` for CI).

Starts a throwaway Redis and NATS (JetStream) on loopback (the tests'
launcher, ``tests/servers.py``), creates the peers' environments under
``benchmarks/.venvs`` (``uv venv`` + ``uv pip install`` from PyPI, one
environment per peer), runs every benchmark with the targets interleaved
round by round (A B C, A B C, ...), prints markdown tables of medians and
ratios to the floor of the same round, and writes
``benchmarks/results/latest.json``, ``benchmarks/results/latest.md`` and the
plot ``docs/img/benchmarks.png``.

Run it with the project's Python (``make bench``): the server launcher
comes from the test suite. Every peer runs as a subprocess of its own
environment; one module per benchmark under ``benchmarks/runner/``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
PROJECT_PYTHON = BENCH.parent / ".venv" / "bin" / "python"
if (
    PROJECT_PYTHON.exists()
    and Path(sys.prefix).resolve() != PROJECT_PYTHON.parent.parent.resolve()
):
    # The server launcher comes from the test suite (it needs pytest): run
    # under the project's Python whatever interpreter started us.
    os.execv(PROJECT_PYTHON, [str(PROJECT_PYTHON), __file__, *sys.argv[1:]])
sys.path.insert(0, str(BENCH))

# The imports below need the path set above.
from runner import load, lock, otel, scheduler, takeover  # noqa: E402
from runner.common import FULL, SMOKE, Context, log  # noqa: E402
from runner.envs import (  # noqa: E402
    Env,
    baseline_env,
    ensure_envs,
    project_env,
    snapshot_source,
)
from runner.output import PUBLISHED, default_png, machine_info, publish, scrub  # noqa: E402
from runner.servers import nats_binary, servers  # noqa: E402

#: In the order they run.
BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m for m in (lock, scheduler, load, takeover, otel)
}
#: Environments that are not peers (kept by --no-peers).
OWN_ENVS = {"project", "baseline", "tools"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds per benchmark; asserts nothing about speed",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="measure only this project and the floors",
    )
    parser.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="also measure this project's lock cycle at COMMIT, in the same rounds",
    )
    parser.add_argument(
        "--rounds", type=int, help="override the number of rounds of every benchmark"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON output (default: benchmarks/results/latest.json for a full run, "
        "with or without --baseline; a temporary directory for --smoke, --only "
        "or --no-peers)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        help="plot output (default: docs/img/benchmarks.png with the published "
        "results, else next to --out)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only redraw the tables and the plot from a results JSON",
    )
    return parser.parse_args()


def render(results: Path, png: Path | None) -> int:
    """Redraw the markdown and the plot of an earlier run (no measuring)."""
    output = json.loads(results.read_text())
    tools = ensure_envs(["tools"], project_env().python or Path(sys.executable))
    publish(output, results, png or default_png(results), tools.get("tools"))
    return 0


def prepare_envs(args: argparse.Namespace, selected: list[str]) -> dict[str, Env]:
    project = project_env()
    wanted = {"tools"}
    for name in selected:
        wanted |= BENCHMARKS[name].environments(args.baseline)
    peers = sorted(wanted - OWN_ENVS)
    if args.no_peers:
        skipped = {n: Env(n, None, error="skipped (--no-peers)") for n in peers}
        peers = []
    else:
        skipped = {}
    log(f"preparing environments: {', '.join(['tools', *peers])}")
    envs = ensure_envs(["tools", *peers], project.python or Path(sys.executable))
    envs.update(skipped)
    for env in envs.values():
        if env.error:
            log(f"environment {env.name}: {env.error}")
    # Measure the source as it is now, even if commits land during the run.
    project.pythonpath = snapshot_source()
    atexit.register(shutil.rmtree, project.pythonpath, ignore_errors=True)
    envs["project"] = project
    if args.baseline:
        envs["baseline"] = baseline_env(args.baseline, project)
        if envs["baseline"].pythonpath:
            atexit.register(
                shutil.rmtree, envs["baseline"].pythonpath, ignore_errors=True
            )
    return envs


def smoke_failures(output: dict[str, Any], selected: list[str]) -> list[str]:
    """This project's and the floors' targets all ran, and every selected
    benchmark produced tables (peers may be unavailable, with a reason)."""
    failures = [
        f"{bench['name']}: {row['target']}: {row['status']}"
        for bench in output["benchmarks"]
        for row in bench["rows"]
        if row["role"] in ("project", "floor") and row["status"] != "ok"
    ]
    produced = {b["benchmark"] for b in output["benchmarks"]}
    return failures + [
        f"{name}: no output" for name in selected if name not in produced
    ]


def main() -> int:
    args = parse_args()
    if args.render:
        return render(args.render, args.png)
    settings = SMOKE if args.smoke else FULL
    if args.rounds:
        settings = settings.with_rounds(args.rounds)
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    partial = bool(args.only or args.no_peers)
    # Only a full run of everything replaces the published results; any other
    # run goes to a temporary directory unless --out says otherwise.
    if args.out is None:
        args.out = (
            PUBLISHED
            if not args.smoke and not partial
            else Path(tempfile.mkdtemp(prefix="bench-")) / "results.json"
        )
    started = time.monotonic()
    envs = prepare_envs(args, selected)
    baseline = envs.get("baseline")
    output: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "partial": partial,
        "settings": settings.as_json(),
        "environments": {
            name: {"error": env.error, "packages": env.packages}
            for name, env in sorted(envs.items())
        },
        "benchmarks": [],
    }
    needs_servers = any(BENCHMARKS[name].SERVERS for name in selected)
    with servers(needs_servers) as (redis, nats):
        output["machine"] = machine_info(nats_binary(), envs["project"])
        ctx = Context(
            settings,
            envs,
            redis=redis,
            nats=nats,
            baseline=baseline.packages["grelmicro"].split()[-1]
            if baseline and baseline.python
            else None,
        )
        for name in selected:
            log(f"benchmark {name}")
            for bench in BENCHMARKS[name].run(ctx):
                output["benchmarks"].append({"benchmark": name, **bench})
    output["elapsed_s"] = time.monotonic() - started
    output = scrub(output)
    publish(output, args.out, args.png or default_png(args.out), envs.get("tools"))
    log(f"done in {output['elapsed_s']:.0f} s")
    failures = smoke_failures(output, selected)
    if not args.out.exists():
        failures.append("no JSON written")
    for failure in failures:
        log(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
