"""What the packaging claims is what is checked: one lowest Python for setup.cfg, tox and ruff."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def claimed_floor() -> tuple[int, int]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    found = re.fullmatch(r">=\s*3\.(\d+)", setup["options"]["python_requires"].strip())
    assert found, "python_requires is a floor: >=3.N"
    return 3, int(found.group(1))


def test_tox_runs_the_lowest_python_that_setup_cfg_claims():
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    versions = [tuple(int(d) for d in (env[2], env[3:]))
                for env in (e.strip() for e in tox["tox"]["envlist"].split(","))
                if re.fullmatch(r"py3\d+", env)]
    assert versions and min(versions) == claimed_floor()


def test_ruff_targets_the_same_lowest_python():
    target = re.search(r'target-version\s*=\s*"py3(\d+)"', (ROOT / "ruff.toml").read_text())
    assert target and (3, int(target.group(1))) == claimed_floor()


def test_every_required_package_is_imported_somewhere():
    """setup.cfg requires only what code imports (the import name may differ)."""
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    import_names = {"gevent-websocket": "geventwebsocket", "hdrhistogram": "hdrh", "PyJWT": "jwt"}
    #: required without an import of its own: gevent's engine, pinned to what was measured
    indirect = {"greenlet"}
    source = "\n".join(p.read_text() for d in ("comet", "flood") for p in (ROOT / d).rglob("*.py"))
    for line in setup["options"]["install_requires"].split():
        package = re.split(r"[<>=!\[]", line)[0].strip()
        if not package or package in indirect:
            continue
        name = import_names.get(package, package)
        assert re.search(rf"^\s*(import|from) {name}\b", source, re.M), f"{package} unused"
