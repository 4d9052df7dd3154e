"""The README is what a newcomer needs in the first ten minutes; reference material lives in docs/ pages linked
from it, and every link between them resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_readme_is_short_and_has_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == [
        "./install.sh && .venv/bin/bge-triton serve",
        "./install.sh --with-bench-tools && .venv/bin/pytest",
    ]
    assert "BGE_TRITON_HOME" in quick
    assert "PLACEHOLDER" not in text
    assert "from openai import OpenAI" in text and "curl -s localhost:8080/v1/embeddings" in text


def test_ci_runs_the_readme_test_command() -> None:
    assert "./install.sh --with-bench-tools && .venv/bin/pytest" in (ROOT / ".ci/run").read_text()


def test_every_docs_page_is_linked_and_every_link_resolves() -> None:
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert {p.name for p in pages} >= {"api.md", "models.md", "benchmarks.md", "reliability.md", "deployment.md"}
    readme_links = set(LINK.findall(README.read_text(encoding="utf-8")))
    for page in pages:
        assert f"docs/{page.name}" in readme_links, page.name
    for source in [README, *pages]:
        for target in LINK.findall(source.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (source.parent / path).resolve() if path else source
            assert resolved.exists(), f"{source.name}: {target}"
            if anchor:
                assert anchor in _anchors(resolved), f"{source.name}: {target}"
