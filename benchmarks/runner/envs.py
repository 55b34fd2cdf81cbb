"""The Python environments the benchmarks run in.

This project is measured from the repository's own ``.venv`` (created with
``uv sync --all-extras`` if missing). Every peer comes from its PyPI release
and gets its own virtual environment under ``benchmarks/.venvs/<name>``
(git-ignored), so that, for example, grelmicro 0.6.0 never shadows this
project's ``grelmicro``. Environments are created with ``uv venv`` and filled
with ``uv pip install``; a marker file records what was installed so a second
run reuses them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
VENVS = BENCH_DIR / ".venvs"
MARKER = ".bench-env.json"

#: Peer environments: name -> requirements installed from PyPI.
PEER_ENVS: dict[str, list[str]] = {
    "grelmicro060": ["grelmicro[redis,kubernetes,postgres,sqlite]==0.6.0"],
    "apscheduler": ["apscheduler>=3.11,<3.12"],
    "aioredlock": ["aioredlock==0.7.3"],
    "pottery": ["pottery==3.0.1"],
    "natskvlock": ["nats-kv-lock==0.0.1"],
    "natspylock": ["natspy-lock==0.2.0"],
    # Plotting only; never a dependency of the project.
    "tools": ["matplotlib>=3.8"],
}


@dataclass
class Env:
    """A ready environment, or the reason it could not be made."""

    name: str
    python: Path | None
    error: str | None = None
    packages: dict[str, str] = field(default_factory=dict)
    #: Imported before the environment's own packages (``PYTHONPATH``): the
    #: project's source snapshot, or a baseline commit's ``grelmicro``.
    pythonpath: Path | None = None


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not on PATH: https://docs.astral.sh/uv/")
    return uv


def clean_env() -> dict[str, str]:
    """The environment for child processes: no venv or path leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "VIRTUAL_ENV",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            # Workers write and reuse bytecode, as deployed services do:
            # without it every worker compiles its imports from source, and
            # start-up figures measure the compiler.
            "PYTHONDONTWRITEBYTECODE",
        }
        and not k.startswith("OTEL_")  # no OpenTelemetry set-up leaking in
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_env(env: Env | None) -> dict[str, str]:
    """`clean_env()`, plus the environment's source path (`Env.pythonpath`)."""
    variables = clean_env()
    if env is not None and env.pythonpath is not None:
        variables["PYTHONPATH"] = str(env.pythonpath)
    return variables


def _freeze(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [_uv(), "pip", "freeze", "--python", str(python)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    ).stdout
    packages: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            packages[name.lower()] = version
    return packages


def project_env() -> Env:
    """The repository's ``.venv``; created with ``uv sync --all-extras`` if absent."""
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        print("creating the project venv: uv sync --all-extras", file=sys.stderr)
        subprocess.run(
            [_uv(), "sync", "--all-extras"], cwd=REPO, env=clean_env(), check=True
        )
    packages = _freeze(python)
    return Env("project", python, packages=packages)


def _python_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def ensure_env(name: str, base_python: Path) -> Env:
    """Create (or reuse) ``benchmarks/.venvs/<name>`` with its peer packages."""
    specs = PEER_ENVS[name]
    target = VENVS / name
    python = target / "bin" / "python"
    marker = target / MARKER
    wanted = {"specs": specs, "python": _python_version(base_python)}
    if marker.exists() and python.exists():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if saved.get("wanted") == wanted:
            return Env(name, python, packages=saved.get("packages", {}))
    env = clean_env()
    try:
        if target.exists():
            shutil.rmtree(target)
        VENVS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_uv(), "venv", "-q", "--python", str(base_python), str(target)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        subprocess.run(
            [_uv(), "pip", "install", "-q", "--python", str(python), *specs],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        reason = detail[-1] if detail else str(exc)
        return Env(name, None, error=f"install failed: {' '.join(specs)}: {reason}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Env(name, None, error=f"install failed: {' '.join(specs)}: {exc}")
    packages = _freeze(python)
    marker.write_text(json.dumps({"wanted": wanted, "packages": packages}))
    return Env(name, python, packages=packages)


def ensure_envs(names: list[str], base_python: Path) -> dict[str, Env]:
    """Create the named peer environments, a few at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        envs = list(pool.map(lambda n: ensure_env(n, base_python), names))
    return {env.name: env for env in envs}


def snapshot_source() -> Path:
    """A copy of the project's package as it is now (committed or not).

    Processes in the project's environment import it first, so a commit that
    lands during the run does not change what is measured halfway.
    """
    target = Path(tempfile.mkdtemp(prefix="bench-src-"))
    shutil.copytree(
        REPO / "grelmicro",
        target / "grelmicro",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


def baseline_env(commit: str, project: Env) -> Env:
    """The project's environment running the ``grelmicro`` of an earlier commit.

    The package is extracted with ``git archive`` into a temporary directory
    put first on ``PYTHONPATH``: same interpreter and dependencies, other code.
    """
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return Env("baseline", None, error=f"unknown commit {commit!r}")
    short = done.stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", short, "grelmicro"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip()
        return Env("baseline", None, error=f"git archive {short}: {reason}")
    target = Path(tempfile.mkdtemp(prefix=f"bench-base-{short}-"))
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)  # our own repository's archive
    return Env(
        "baseline",
        project.python,
        packages={**project.packages, "grelmicro": f"commit {short}"},
        pythonpath=target,
    )
