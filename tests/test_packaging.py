"""pyproject.toml against what the README's commands install and what the converter writes: the same
dependency floors in requirements.txt, the version read from engine.__version__, the pytest settings."""
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import engine

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _lines(path):
    return [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#")[0].strip() and not line.startswith("-r")]


def test_requirements_txt_has_the_same_floors_as_pyproject():
    def norm(spec):
        r = Requirement(spec)
        return re.sub(r"[-_.]+", "-", r.name).lower(), str(r.specifier)
    assert sorted(map(norm, _lines(ROOT / "requirements.txt"))) == sorted(map(norm, _pyproject()["project"]["dependencies"]))


def test_version_comes_from_the_engine():
    meta = _pyproject()
    assert meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engine.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", engine.__version__)


def test_pytest_reads_its_markers_from_pyproject(pytestconfig):
    assert not (ROOT / "pytest.ini").exists()  # a pytest.ini would win over pyproject.toml silently
    assert Path(pytestconfig.inipath).name == "pyproject.toml"
    assert {m.split(":")[0] for m in pytestconfig.getini("markers")} >= {"gpu", "slow"}
