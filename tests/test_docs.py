"""The README is the site's front door: every docs page it links exists and is in the site's navigation, and the
README stays a front page (at most 300 lines). ``mkdocs build --strict`` (in ``make test``) checks the site's own links."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(nav) -> set[str]:
    pages = set()
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_the_readme_links_is_in_the_site():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)", readme))
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    assert linked, "the README links no docs page"
    assert linked <= nav, sorted(linked - nav)
    assert all((ROOT / "docs" / page).is_file() for page in nav), sorted(p for p in nav if not (ROOT / "docs" / p).is_file())


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
