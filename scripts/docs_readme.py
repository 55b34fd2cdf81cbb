"""Copy the README's Python examples from their snippet files (`--check`: compare).

GitHub cannot include files into the README, so its Python blocks are copies
of files under docs/snippets/, which the test suite runs. Each README block is
preceded by a marker naming its source, a whole file or one section:

    <!-- snippet: docs/snippets/quickstart_nats.py -->
    <!-- snippet: docs/snippets/without_faststream.py:example -->

    python scripts/docs_readme.py          # rewrite the blocks from the files
    python scripts/docs_readme.py --check  # exit 1 if a block differs
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(<!-- snippet: (?P<ref>[^ ]+) -->\n\n```python\n)(?P<code>.*?)(\n```)", re.S
)


def snippet(ref: str) -> str:
    """The text of a snippet file, or of one `--8<-- [start:x]` section of it."""
    path, _, section = ref.partition(":")
    text = (ROOT / path).read_text(encoding="utf-8")
    if section:
        match = re.search(
            rf"^[ \t]*# --8<-- \[start:{re.escape(section)}\]\n(.*?)"
            rf"^[ \t]*# --8<-- \[end:{re.escape(section)}\]",
            text,
            re.S | re.M,
        )
        if match is None:
            msg = f"no section {section!r} in {path}"
            raise SystemExit(msg)
        text = textwrap.dedent(match.group(1))
    return text.strip("\n")


def render(readme: str) -> str:
    return BLOCK.sub(
        lambda m: m.group(1) + snippet(m.group("ref")) + m.group(4), readme
    )


def main() -> int:
    readme = README.read_text(encoding="utf-8")
    if not BLOCK.search(readme):
        print("README.md has no <!-- snippet: ... --> block", file=sys.stderr)
        return 1
    rendered = render(readme)
    if "--check" in sys.argv[1:]:
        if rendered != readme:
            print("README.md differs from its snippets: run scripts/docs_readme.py")
            return 1
        return 0
    README.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
