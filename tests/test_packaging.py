"""The project's set-up files agree with each other and with the README."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    pip_section = re.search(r"- pip:\n((?:\s+- .+\n)+)", (ROOT / "environment.yml").read_text()).group(1)
    items = [line.strip()[2:].replace(" ", "") for line in pip_section.splitlines()]
    conda = {_name(item): item for item in items if not item.startswith("-e")}
    assert conda == pyproject


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert "make test" in ci


def test_ci_pins_the_cpu_torch():
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_the_build_backend_reads_pyproject_without_a_deprecation_warning(monkeypatch):
    """The license is an SPDX expression (setuptools >= 77); the old ``{text = ...}`` table is deprecated."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # setuptools reads the readme and finds the packages relative to the project
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in requires
