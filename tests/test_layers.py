"""The import contracts of pyproject.toml ([tool.importlinter], drawn in CONTRIBUTING.md) hold, and they
catch what they are for: an import that goes up a layer, one between independent siblings, evaluation
reaching into a model family, and a cycle."""

from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.application import use_cases
from importlinter.application.app_config import settings

PYPROJECT = str(Path(__file__).resolve().parents[1] / "pyproject.toml")


class _GraphWith:
    """A graph builder that returns dpms's real import graph plus some imports."""

    def __init__(self, extra_imports=()):
        self.extra_imports = extra_imports

    def build(self, root_package_names, cache_dir=None, include_external_packages=False, exclude_type_checking_imports=False):
        graph = grimp.build_graph(*root_package_names, cache_dir=None, exclude_type_checking_imports=exclude_type_checking_imports)
        for importer, imported in self.extra_imports:
            graph.add_import(importer=importer, imported=imported, line_number=1, line_contents="import (test)")
        return graph


def _broken(extra_imports=()) -> set[str]:
    """Names of the broken contracts of pyproject.toml on dpms's graph with `extra_imports` added."""
    configuration.configure()  # what `lint-imports` sets up: option readers, file system, timer, contract types
    use_cases._register_built_in_contract_types()
    settings.configure(GRAPH_BUILDER=_GraphWith(extra_imports))
    try:
        report = use_cases.create_report(use_cases.read_user_options(PYPROJECT), cache_dir=None)
    finally:
        configuration.configure()
    assert report.contains_failures == bool(report.broken_count)
    return {contract.name for contract, check in report.get_contracts_and_checks() if not check.kept}


def test_the_code_keeps_every_contract():
    assert _broken() == set()


@pytest.mark.parametrize("importer, imported, contract", [
    ("dpms.sampler.steps", "dpms.target", "Layers"),  # up a layer
    ("dpms.generate", "dpms.speed", "Layers"),  # between independent commands (the old generate <-> speed cycle)
    ("dpms.evaluation.fid", "dpms.digits.features", "Evaluation only consumes samples"),  # the old digits cycle
    ("dpms.models.ddpm", "dpms.sampler", "Architectures know nothing of solvers"),
    ("dpms.digits.model", "dpms.digits.training", "No import cycles"),  # training imports model
])
def test_a_forbidden_import_breaks_its_contract(importer, imported, contract):
    assert any(name.startswith(contract) for name in _broken([(importer, imported)])), contract
