"""``adex screen``: inputs, the per-chunk pipeline, Parquet partitions, resumption, and
fault tolerance on a Dask LocalCluster (a worker killed mid-run; SIGINT to the command).

Small inputs (a dozen small Materials Project crystals, the fast ``vacancy-core``
expert), so the whole file runs in about a minute on 2 cores; skipped without dask or
pyarrow (``pip install 'adex[screen]'``).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from conftest import SHIPPED_STORE, perovskite, rocksalt  # noqa: E402

CORE = "builtin::expert/vacancy-core"
N_HOSTS = 14


@pytest.fixture(autouse=True)
def _shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped experts (worker processes inherit the environment)."""
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))


@pytest.fixture(scope="module")
def mp_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first N_HOSTS small CIFs of the MP archive (mp-1, Cs, has no neighbour within
    the cutoff: an error row) plus a file that is no crystal."""
    folder = tmp_path_factory.mktemp("mp_hosts")
    n = 0
    with tarfile.open(data_dir / "mp_formation_energy" / "structures.tar.gz", "r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".cif") and member.size < 1000:
                (folder / Path(member.name).name).write_bytes(archive.extractfile(member).read())
                n += 1
                if n == N_HOSTS:
                    break
    (folder / "zz-broken.cif").write_text("data_broken\n_cell_length_a 3\nthis is not a CIF\n")
    return folder


def _screen(inputs, out, workers=1, hosts_per_task=2, **kwargs):
    from adex.expert.screen_inputs import ScreenInputs
    from adex.expert.screening import screen

    if not isinstance(inputs, ScreenInputs):
        inputs = ScreenInputs(tuple(str(p) for p in inputs))
    return screen(inputs, out, expert=CORE, workers=workers, hosts_per_task=hosts_per_task, progress=False,
                  dashboard=":0", on_message=lambda line: None, **kwargs)


def _read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _vacancies(out: Path):
    from adex.expert.screening import read_screen

    return read_screen(out, "vacancies").sort_values(["host_id", "site"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(mp_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 1-worker screen of ``mp_folder`` (out folder, summary)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))
        mp.setenv("ADEX_HOME", str(tmp_path_factory.mktemp("screen_home")))
        out = tmp_path_factory.mktemp("reference") / "screen"
        summary = _screen([mp_folder], out, workers=1)
    return out, summary


# --------------------------------------------------------------------------- inputs
def test_inputs_folder_archive_table(tmp_path: Path) -> None:
    from adex.expert.screen_inputs import ScreenInputs, plan_tasks

    folder = tmp_path / "hosts"
    folder.mkdir()
    rocksalt().to(filename=str(folder / "MgO.cif"))
    perovskite().to(filename=str(folder / "POSCAR"), fmt="poscar")
    (folder / "notes.txt").write_text("not a structure")
    archive = tmp_path / "hosts.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("a/MgO.cif", "b/SrTiO3.vasp", "README"):
            data = (folder / ("MgO.cif" if name.endswith("cif") else "POSCAR")).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = tmp_path / "table.csv"
    table.write_text("structure,site\nhosts/MgO.cif,0\nhosts/MgO.cif,5\nhosts/POSCAR,\n")

    hosts = list(ScreenInputs((str(folder), str(archive)), str(table)))
    assert [(h.host_id, h.fmt, h.sites) for h in hosts] == [
        ("MgO", "cif", None), ("POSCAR", "poscar", None),
        ("MgO", "cif", None), ("SrTiO3", "poscar", None),
        ("MgO", "cif", (0, 5)), ("POSCAR", "poscar", None)]
    assert hosts[2].source.endswith("hosts.tar.gz:a/MgO.cif") and hosts[2].text == hosts[0].text
    assert ScreenInputs((str(folder), str(archive)), str(table)).count() == len(hosts)

    tasks = list(plan_tasks(hosts, 4, "expert-a"))
    assert [len(t.hosts) for t in tasks] == [4, 2] and tasks[0].name.startswith("part-000000-")
    assert [t.key for t in plan_tasks(hosts, 4, "expert-a")] == [t.key for t in tasks]  # deterministic
    assert not {t.key for t in plan_tasks(hosts, 4, "expert-b")} & {t.key for t in tasks}  # keyed by expert


def test_screen_hosts_matches_the_api(tmp_path: Path) -> None:
    """The chunk pipeline predicts what ``VacancyExpert.predict(sites="all")`` predicts,
    with Wyckoff letters, multiplicities and ``v_O`` names; bad hosts become error rows."""
    import adex
    from adex.expert.screen_inputs import HostInput
    from adex.expert.screen_worker import screen_hosts

    expert = adex.load_expert(CORE)
    rocksalt().to(filename=str(tmp_path / "MgO.cif"))
    perovskite().to(filename=str(tmp_path / "SrTiO3.cif"))
    hosts = [HostInput(p.stem, str(p), "cif", p.read_text()) for p in sorted(tmp_path.glob("*.cif"))]
    hosts.append(HostInput("broken", "broken.cif", "cif", "data_x\nnonsense\n"))
    hosts.append(HostInput("MgO-O", "MgO.cif", "cif", hosts[0].text, sites=(4, 5, 99)))  # 4, 5: one O orbit
    result = screen_hosts(expert._loaded, hosts)
    vac = result.vacancies.to_pandas()
    assert list(vac.host_id) == ["MgO", "MgO", "SrTiO3", "SrTiO3", "SrTiO3"]
    assert list(vac.defect) == ["v_Mg", "v_O", "v_Sr", "v_Ti", "v_O"]
    assert list(vac.multiplicity) == [4, 4, 1, 1, 3] and list(vac.wyckoff) == ["4a", "4b", "1a", "1b", "3c"]
    for host_id in ("MgO", "SrTiO3"):
        api = expert.predict(tmp_path / f"{host_id}.cif", sites="all")
        mine = vac[vac.host_id == host_id]
        assert list(mine.site) == list(api.site)
        np.testing.assert_allclose(mine.dH_pred_eV, api.dH_pred_eV, atol=1e-5)
        np.testing.assert_allclose(mine.dH_std_eV, api.dH_std_eV, atol=1e-5)
    hosts_table = result.hosts.to_pandas().set_index("host_id")
    assert hosts_table.loc["MgO", "min_dH_eV"] == pytest.approx(vac[vac.host_id == "MgO"].dH_pred_eV.min())
    assert dict(hosts_table.loc["SrTiO3", "min_dH_by_element"])["O"] == pytest.approx(vac.dH_pred_eV.iloc[4])
    errors = result.errors.to_pandas()
    assert list(errors.host_id) == ["broken", "MgO-O"] and list(errors.stage) == ["read", "symmetry"]
    assert errors.reason[0] == "unreadable structure file" and errors.reason[1] == "site out of range"


# --------------------------------------------------------------------------- a screen
def test_screen_writes_partitions_and_resumes(reference, tmp_path: Path) -> None:
    out, summary = reference
    vac = _vacancies(out)
    assert summary.hosts == N_HOSTS + 1 and summary.tasks == (N_HOSTS + 2) // 2
    assert summary.vacancies == len(vac) == summary.run_vacancies > N_HOSTS
    assert not vac.duplicated(["host_id", "site"]).any()
    assert set(vac.columns) >= {"host_id", "formula", "n_atoms", "site", "element", "wyckoff", "multiplicity", "defect",
                                "dH_pred_eV", "dH_std_eV", "expert"}
    assert (vac.defect == "v_" + vac.element).all() and vac.expert.str.startswith(CORE).all()
    from adex.expert.screening import read_screen

    errors = read_screen(out, "errors")
    assert set(errors.host_id) >= {"zz-broken"} and summary.errors_by_reason
    hosts = read_screen(out, "hosts")
    assert len(hosts) + len(set(errors.host_id)) == N_HOSTS + 1 and hosts.time_s.gt(0).all()
    for table in ("vacancies", "hosts", "errors"):
        assert len(list((out / table).glob("part-*.parquet"))) == summary.tasks
    manifest = json.loads((out / "screen.json").read_text())
    assert manifest["status"] == "finished" and manifest["expert"].startswith(CORE)

    # a rerun computes nothing; another expert into the same folder is refused
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    again = _screen([Path(manifest["inputs"][0])], out, workers=1)
    assert again.tasks_skipped == again.tasks == summary.tasks and again.run_vacancies == 0
    assert again.vacancies == summary.vacancies
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == mtimes
    from adex.errors import AdexError

    with pytest.raises(AdexError, match="another screen"):
        _screen([Path(manifest["inputs"][0])], out, workers=1, hosts_per_task=3)


def test_killed_worker_loses_and_duplicates_nothing(reference, mp_folder: Path, tmp_path: Path) -> None:
    """2 workers, one SIGKILLed while it holds a task: Dask reruns its task elsewhere and
    the screen equals the 1-worker run, every vacancy exactly once."""
    killed: list[int] = []

    def kill_one(task, stats, client) -> None:
        if killed:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        if not busy:
            return
        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    out = tmp_path / "screen"
    summary = _screen([mp_folder], out, workers=2, hosts_per_task=1, on_partition=kill_one)
    assert killed, "no worker was busy when the first partition arrived"
    ref = _vacancies(reference[0])
    got = _vacancies(out)
    assert not got.duplicated(["host_id", "site"]).any()
    assert summary.vacancies == len(got) == len(ref) and summary.hosts == reference[1].hosts
    assert list(got.host_id) == list(ref.host_id) and list(got.site) == list(ref.site)
    np.testing.assert_allclose(got.dH_pred_eV, ref.dH_pred_eV, atol=1e-5)
    assert summary.errors_by_reason == reference[1].errors_by_reason


def test_sigint_resumes_without_recomputing(reference, mp_folder: Path, tmp_path: Path) -> None:
    """Ctrl-C stops ``adex screen`` between partitions; the rerun skips the written ones
    (their files are untouched) and completes the screen. The input is 20 copies of the
    small hosts (a few seconds of work), so that the interrupt lands mid-screen."""
    copies = 20
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    for k in range(copies):
        for path in mp_folder.iterdir():
            (hosts / f"c{k:02d}-{path.name}").write_bytes(path.read_bytes())
    n_tasks = copies * (N_HOSTS + 1)
    out = tmp_path / "screen"
    cmd = [sys.executable, "-m", "adex", "screen", str(hosts), "--out", str(out), "--expert", CORE,
           "--workers", "1", "--hosts-per-task", "1"]
    # SIGINT back to its default in the child: a test run started in the background by a
    # non-interactive shell (nohup ... &) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "vacancies").glob("part-*.parquet"))) < 3:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert json.loads((out / "screen.json").read_text())["status"] == "interrupted"
    partial = json.loads((out / "summary.json").read_text())  # the totals so far
    assert partial["status"] == "interrupted"
    done = sorted((out / "vacancies").glob("part-*.parquet"))
    assert 3 <= len(done) < n_tasks, "the screen finished before the interrupt"
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert partial["vacancies"] == sum(len(_read(p)) for p in done)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["tasks_skipped"] >= len(done) and summary["tasks"] == n_tasks
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # not recomputed
    got, ref = _vacancies(out), _vacancies(reference[0])
    assert not got.duplicated(["host_id", "site"]).any() and len(got) == copies * len(ref)
    for k in (0, copies - 1):  # a copy written before the interrupt and one after
        copy = got[got.host_id.str.startswith(f"c{k:02d}-")].assign(host_id=lambda t: t.host_id.str[4:])
        copy = copy.sort_values(["host_id", "site"]).reset_index(drop=True)
        assert list(copy.host_id) == list(ref.host_id) and list(copy.site) == list(ref.site)
        np.testing.assert_allclose(copy.dH_pred_eV, ref.dH_pred_eV, atol=1e-5)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    from conftest import assert_one_line_error

    proc = subprocess.run([sys.executable, "-m", "adex", "screen", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "no such file")


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from adex.errors import MissingExtraError
    from adex.expert.screening import require_screen_extras

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'adex\[screen\]'"):
        require_screen_extras()


@pytest.mark.filterwarnings("ignore::adex.expert.predict.InputWarning")  # elements vacancy-core never saw
def test_predict_sites_dask_equals_predict_sites(mp_folder: Path) -> None:
    """The engine of ``adex predict --workers N``: the result of the in-process path (same
    keys, same order, same numbers), progress per chunk and the caveats of every file."""
    import adex
    from adex.expert.predict import predict_sites
    from adex.expert.screening import predict_sites_dask
    from adex.io import read_structure
    from adex.supercell import distinct_sites

    loaded = adex.load_expert(CORE)._loaded
    files = [p for p in sorted(mp_folder.glob("mp-*.cif")) if p.name != "mp-1.cif"][:5]
    jobs = [(str(p), [info.index for info in distinct_sites(read_structure(p))]) for p in files]
    done: list[int] = []
    caveats: dict[str, str] = {}
    got = predict_sites_dask(loaded, jobs, workers=1, chunk_vacancies=4, on_progress=done.append, caveats=caveats)
    expected = predict_sites(loaded, jobs)
    assert list(got) == list(expected) and sum(done) == len(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-6)
    assert set(caveats) == {path for path, _ in jobs}


def test_workers_keep_freed_memory_on_glibc() -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker, which made torch 1.7x
    slower there; the worker plugin raises glibc's thresholds back (a no-op elsewhere)."""
    import platform

    pytest.importorskip("distributed")
    from adex.expert.screen_dask import keep_freed_memory

    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
