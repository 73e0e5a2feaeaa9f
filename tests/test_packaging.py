"""The wheel: built with ``python -m build --wheel`` from the source tree, installed in a
fresh virtual environment, its quick start works there (the built-in models included).

Slow (about a minute; ``python -m pytest -m slow tests/test_packaging.py``). The venv sees
the system's site-packages (``--system-site-packages``), so torch and the other
dependencies are not downloaded again; adex itself is imported from the venv's wheel, never
from the source tree (checked).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
HOST = "witman2023_vacancies/structures/0009491-O1.cif"


def _source_copy(dest: Path) -> Path:
    """The files git knows of (tracked, or new and not ignored) as they are in the working
    tree, copied to ``dest``: the build must not write build/ or *.egg-info into the tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in listed.stdout.decode().split("\0"):
        path = REPO_ROOT / name
        if name and path.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)
    return dest


def _run(argv: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``argv`` with the test's isolated ADEX_HOME, but the installed package's own built-in
    store (the other tests point ADEX_BUILTIN_REGISTRY at an empty one)."""
    env = {k: v for k, v in os.environ.items() if k != "ADEX_BUILTIN_REGISTRY"}
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installs_in_a_fresh_venv_and_its_quick_start_works(tmp_path, data_dir) -> None:
    pytest.importorskip("build", reason="python -m build: pip install build (in the test extra)")
    source = _source_copy(tmp_path / "source")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source], cwd=tmp_path)
    wheels = list((tmp_path / "dist").glob("adex-*.whl"))
    assert len(wheels) == 1
    size_mb = wheels[0].stat().st_size / 1e6
    print(f"wheel {wheels[0].name}: {size_mb:.1f} MB")
    assert size_mb < 30

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=tmp_path)
    python, adex = venv / "bin" / "python", venv / "bin" / "adex"
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", wheels[0]], cwd=tmp_path)
    work = tmp_path / "work"  # not the repository root: `import adex` must find the wheel
    work.mkdir()
    where = _run([python, "-c", "import adex, adex.registry, adex.studies; print(adex.__file__); "
                  "print(adex.registry.__file__); print(adex.studies.__file__)"], cwd=work).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where
    builtin = Path(where[1]).parent / "builtin"
    shipped = sorted(p.relative_to(REPO_ROOT / "registry" / "builtin") for p in (REPO_ROOT / "registry" / "builtin").rglob("*")
                     if p.is_file())
    assert shipped and sorted(p.relative_to(builtin) for p in builtin.rglob("*") if p.is_file()) == shipped

    # the README's quick start: the CLI ...
    listing = _run([adex, "registry", "list"], cwd=work).stdout
    assert "builtin" in listing and "expert" in listing
    predicted = _run([adex, "predict", "--expert", "builtin::expert/vacancy-core", "--structure", data_dir / HOST,
                      "--site", "0"], cwd=work).stdout
    assert re.search(r"^0,O,32e,\d+\.\d+", predicted, re.M), predicted
    # ... and every Python block, with the data where this machine has it
    blocks = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        out = _run([python, "-c", block.replace("../shared/data", str(data_dir))], cwd=work).stdout
        assert "v_O" in out and "dH_pred_eV" in out
