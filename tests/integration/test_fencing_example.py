"""examples/fencing/app.py runs standalone against a real Redis and exits by itself.

Two copies run side by side, as a user would start them (``python app.py
--seconds N`` with ``REDIS_URL``): every report is written once, with tokens
that never repeat and grow from run to run whichever copy ran it; at the end
each copy's replayed stale write is rejected by the store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest

from tests.integration.faults.harness import figure

pytestmark = [pytest.mark.integration]

APP = Path(__file__).resolve().parents[2] / "examples" / "fencing" / "app.py"
WRITTEN = re.compile(r"^(\S+): report written with token (\d+)$")


def test_example_app_runs_and_rejects_stale_writes(
    redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "FENCING_PREFIX": f"grelmicro-fence-example-{uuid4().hex[:8]}:",
    }
    started = time.monotonic()
    copies = []
    for index in range(2):
        copies.append(
            subprocess.Popen(
                [sys.executable, str(APP), "--seconds", "3"],
                env={**env, "WORKER_NAME": f"copy{index}"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    for process in copies:
        stdout, stderr = process.communicate(timeout=20)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        assert "ERROR" not in stderr, stderr
        outputs.append(stdout)
    took = time.monotonic() - started
    written = [
        (int(match[2]), match[1])
        for out in outputs
        for line in out.splitlines()
        if (match := WRITTEN.match(line))
    ]
    tokens = [token for token, _ in written]
    figure("example: reports written by two copies in 3 s", len(written), unit="")
    figure("example: both copies ran and exited in", took, 20)
    assert len(written) >= 3, outputs
    assert len(set(tokens)) == len(tokens), outputs
    assert any("stale write with token" in out for out in outputs), outputs
    assert took < 20


SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            "fencing_lock.py",
            (
                "first holder, token 1: written=True",
                "second holder, token 2: written=True",
                "first holder again, token 1: written=False",
                "row: body='v2' fence=2",
            ),
        ),
        (
            "fencing_supervised.py",
            (
                "export cancelled: its lock could not be kept any longer",
                "rebuild stopped: current_run().lost is True",
            ),
        ),
    ],
)
def test_doc_snippets_run(snippet: str, expected: tuple[str, ...]) -> None:
    """The fencing page's snippets run standalone and print what they promise."""
    done = subprocess.run(
        [sys.executable, str(SNIPPETS / snippet)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "ERROR" not in done.stderr, done.stderr
    for line in expected:
        assert line in done.stdout, (line, done.stdout)
