"""The site's pictures say what the recorded runs show, and redraw cleanly.

`scripts/docs_images.py` runs the demo and the acquisition-order scenario
for real (`make docs-images`) and stores each run as JSON next to its SVG.
These tests redraw both pictures from the stored runs, check that the SVG
is well-formed, and check the claims the pages make against the recorded
data (no double run, a takeover bounded by the lease, locks taken in order).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMG = ROOT / "docs" / "img"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images() -> ModuleType:
    return load_script("docs_images")


def stored(stem: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((IMG / f"{stem}.json").read_text())
    return data


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()  # well-formed, or this raises
    return " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))


def test_demo_timeline_redraws_and_holds(images: ModuleType, tmp_path: Path) -> None:
    data = stored("demo-timeline")
    assert images.check_demo(data) == []
    images.draw_demo(data, tmp_path / "t.svg")
    text = svg_text(tmp_path / "t.svg")
    for worker in data["workers"]:
        assert worker in text
    assert "SIGKILL" in text
    assert "SIGTERM" in text
    assert "takeover" in text
    assert "0 double runs" in text


def test_demo_check_catches_a_double_run(images: ModuleType) -> None:
    data = copy.deepcopy(stored("demo-timeline"))
    data["summary"]["double_runs"] = 1
    assert images.check_demo(data) == ["1 double runs"]
    crash = next(s for s in data["stops"] if s["kind"] == "crash")
    crash["takeover_t"] = crash["t"] + 0.1  # faster than a lease: impossible
    assert any("crash takeover" in p for p in images.check_demo(data))


def test_acquisition_order_redraws_and_holds(
    images: ModuleType, tmp_path: Path
) -> None:
    data = stored("acquisition-order")
    assert images.check_order(data) == []
    images.draw_order(data, tmp_path / "o.svg")
    text = svg_text(tmp_path / "o.svg")
    for label in ("not leader", "held elsewhere", "ran", "tasklock:report"):
        assert label in text


def test_order_check_catches_locks_out_of_order(images: ModuleType) -> None:
    data = copy.deepcopy(stored("acquisition-order"))
    ran = next(a for a in data["attempts"] if a.get("ran"))
    ran["calls"].reverse()  # resource lock before the task lock
    assert any("calls in the order" in p for p in images.check_order(data))


def test_api_reference_shows_doc_texts_as_parameters() -> None:
    import griffe

    extension = load_script("docs_typingdoc").TypingDoc()
    package = griffe.load(
        "grelmicro",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(extension),
        docstring_parser=griffe.Parser.google,
    )
    init = package["sync.lock.Lock.__init__"]
    name = next(p for p in init.parameters if p.name == "name")
    assert "Annotated" not in str(name.annotation)
    assert init.docstring is not None
    sections = [s for s in init.docstring.parsed if s.kind.value == "parameters"]
    assert sections, "no Parameters section built from the Doc() texts"
    documented = {p.name: p.description for p in sections[0].value}
    assert documented["name"]
