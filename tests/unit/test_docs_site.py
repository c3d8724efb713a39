"""The documentation site's sources agree with what they document (`make docs` builds it strict; this is
the part that needs no build): the API page lists exactly the public API, and every README section a page
includes is marked in the README."""

from __future__ import annotations

import re

import yaml

import ebbtide
import ebbtide.testing
from ebbtide import errors
from tests.conftest import REPO

DOCS = REPO / "docs"


def _members(page: str, identifier: str) -> list[str]:
    """The `members:` list of the `::: identifier` block of a page."""
    block = page.split(f"::: {identifier}\n", 1)[1].split(":::", 1)[0]
    return re.findall(r"^\s+- (\w+)$", block, re.M)


def test_the_api_page_lists_the_public_api() -> None:
    page = (DOCS / "reference" / "api.md").read_text()
    error_names = {
        name
        for name in ebbtide.__all__
        if isinstance(getattr(ebbtide, name), type) and issubclass(getattr(ebbtide, name), errors.EbbtideError)
    }
    assert set(_members(page, "ebbtide")) == set(ebbtide.__all__) - error_names
    assert "::: ebbtide.errors" in page  # the whole error tree
    assert set(_members(page, "ebbtide.testing")) == set(ebbtide.testing.__all__) - {"KvPut", "Publish", "Status"}


def test_included_readme_sections_are_marked_and_every_page_is_in_the_nav() -> None:
    readme = (REPO / "README.md").read_text()
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    for page in pages:
        for section in re.findall(r'--8<-- "README.md:(\w+)"', (DOCS / page).read_text()):
            assert readme.count(f"<!-- --8<-- [start:{section}] -->") == 1, section
            assert readme.count(f"<!-- --8<-- [end:{section}] -->") == 1, section
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "python"))

    def nav_files(entries: list[object]) -> list[str]:
        found: list[str] = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found += nav_files(value) if isinstance(value, list) else [str(value)]
        return found

    assert sorted(nav_files(config["nav"])) == pages
