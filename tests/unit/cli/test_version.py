"""One source for the version: edgeagent/__init__.py, read by pyproject and the CLI."""

from __future__ import annotations

import re
import tomllib

import pytest
from support.daemon import ROOT

import edgeagent
from edgeagent.cli.main import main


def test_pyproject_reads_the_version_from_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "edgeagent.__version__"}


def test_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", edgeagent.__version__)


def test_cli_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"edgeagent {edgeagent.__version__}\n"
