"""The house rules the layering leaves to a test: no import cycle anywhere in src/cnnlab, no source file over 500
lines. (Which layer may import which is import-linter's job: `lint-imports`, contracts in pyproject.toml.)"""

from __future__ import annotations

from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"


def test_no_import_cycles_among_the_modules():
    graph = grimp.build_graph("cnnlab", cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and graph.direct_import_exists(importer=importer, imported=imported):
                if not _is_package_of(imported, importer) and not _is_package_of(importer, imported):
                    cycles.append((importer, *back))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
