"""The built packages carry what pgqueue needs: a wheel (what `pip install .` builds) and a wheel
built from the sdist hold the SQL files and py.typed, and the wheel installed in a fresh virtualenv
runs `pgqueue --version` and `pgqueue migrate` far from the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import pgqueue
from pgqueue.migrate import latest_version

ROOT = Path(__file__).resolve().parents[2]
SQL_FILES = sorted(
    str(path.relative_to(ROOT)) for path in (ROOT / "sql").rglob("*.sql") if path.is_file()
)

#: Run inside the installed package's interpreter: where pgqueue lives and what it can read.
PROBE = """
import importlib.resources, json, pgqueue
from pgqueue.migrate import migrations
root = importlib.resources.files("pgqueue")
print(json.dumps({
    "file": pgqueue.__file__,
    "version": pgqueue.__version__,
    "py_typed": root.joinpath("py.typed").is_file(),
    "functions_sql": root.joinpath("sql", "functions.sql").is_file(),
    "migrations": [m.version for m in migrations()],
}))
"""

pytestmark = pytest.mark.slow


def _run(args: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE_", "PYTHON"))}
    env.pop("DATABASE_URL", None)
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name for name in zf.namelist() if ".dist-info/" not in name}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A wheel built from the source tree as `pip install .` builds it, and an sdist."""
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(out)], cwd=out)
    _run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(out)], cwd=ROOT)
    (wheel,) = out.glob("pgqueue-*.whl")
    (sdist,) = out.glob("pgqueue-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "dir": out}


def test_the_wheel_and_the_sdist_carry_the_sql_and_py_typed(
    built: dict[str, Path], tmp_path: Path
) -> None:
    names = _wheel_names(built["wheel"])
    assert SQL_FILES, "no .sql files found in the source tree"
    for sql in SQL_FILES:
        assert f"pgqueue/{sql}" in names, sql
    assert "pgqueue/py.typed" in names
    assert "pgqueue/cli.py" in names
    assert not any(name.startswith(("tests/", "sql/")) for name in names)

    with tarfile.open(built["sdist"]) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for sql in SQL_FILES:
        assert sql in members, sql
    # A wheel built from the sdist (what pip does with an sdist) holds the same files.
    from_sdist = tmp_path / "from-sdist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "wheel",
            str(built["sdist"]),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(from_sdist),
        ],
        cwd=tmp_path,
    )
    (wheel,) = from_sdist.glob("pgqueue-*.whl")
    assert _wheel_names(wheel) == names


def test_the_installed_wheel_works_without_the_source_tree(
    built: dict[str, Path], tmp_path: Path, empty_dsn: str
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies come from the package index (or pip's cache); pgqueue from the wheel.
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(built["wheel"]),
        ],
        cwd=tmp_path,
        timeout=600,
    )
    away = tmp_path / "elsewhere"
    away.mkdir()

    probe = json.loads(_run([str(python), "-c", PROBE], cwd=away).stdout)
    installed = Path(probe["file"]).resolve()
    assert installed.is_relative_to(env_dir.resolve()), installed
    assert not installed.is_relative_to(ROOT)
    assert probe["version"] == pgqueue.__version__
    assert probe["py_typed"]
    assert probe["functions_sql"]
    assert probe["migrations"] == list(range(1, latest_version() + 1))

    script = env_dir / "bin" / "pgqueue"
    version = _run([str(script), "--version"], cwd=away)
    assert version.stdout.strip() == f"pgqueue {pgqueue.__version__}"
    migrate = _run([str(script), "migrate", "--dsn", empty_dsn, "--json"], cwd=away)
    assert json.loads(migrate.stdout)["version"] == latest_version()
    status = _run([str(script), "status", "--dsn", empty_dsn, "--json"], cwd=away)
    assert json.loads(status.stdout)["rows"] == []
