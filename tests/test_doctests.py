"""The docstring examples (``>>>``) of every module under captioner/ and transformer_components/ run and
print what they show: a stale example fails here instead of misleading a reader.

Modules are found by scanning the files for ``>>>``, so a new module with examples is tested without
being listed. A module whose every example is marked ``# doctest: +SKIP`` (it would write files,
download, or read a file that is not here) is skipped with that reason, not passed.
"""

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("captioner", "transformer_components")


def modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(REPO).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_modules_with_examples_are_found():
    assert {"captioner.evaluation.metrics", "captioner.models.mae", "captioner.training.schedule"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    runnable = [ex for t in tests for ex in t.examples if not ex.options.get(doctest.SKIP)]
    if not runnable:
        pytest.skip(f"{name}: every example is marked +SKIP (it needs files that are not here, or downloads)")
    failed, attempted = doctest.testmod(module, verbose=False, report=True)
    assert attempted == len(runnable) > 0
    assert failed == 0, f"{failed} of {attempted} docstring examples of {name} fail (printed above)"
