"""``adex data download/verify/list`` against a local HTTP server (never the internet).

The server mimics codeload.github.com: ``/{owner}/{repo}/tar.gz/{commit}`` answers a
``tar.gz`` whose top folder is ``{repo}-{commit}/`` holding the repository paths. The
archives are built here from the shipped data (``$ADEX_DATA`` or ``<repo>/../shared/data``)
mapped back to their source paths, so a download must rebuild the shipped layout, the
derived files included, to pass the checksums of ``adex/data/datasets.json``. The modules
of the download are exercised through it: the table (``adex.catalog``), the fetch
(``adex.fetch``), extraction and packing (``adex.archive``), the derived files
(``adex.derived``), the checksums (``adex.checksums``) and the steps (``adex.download``).
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from adex import archive, catalog, checksums, derived
from adex import download as dl
from adex.cli import main
from adex.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cgcnn_pretrained", "mp_formation_energy", "oxide_bandgaps", "witman2023_vacancies"]


def _find_shared() -> Path | None:
    candidates = [os.environ.get("ADEX_DATA"), str(REPO_ROOT.parent / "shared" / "data")]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_dir() for name in NAMES):
            return Path(candidate)
    return None


SHARED = _find_shared()
pytestmark = pytest.mark.skipif(
    SHARED is None,
    reason="shipped data not found (set ADEX_DATA to a folder holding the four datasets, "
    "or put them at <repo>/../shared/data)",
)

WITMAN = "cgcnndefect/examples/OxideMLpaper1"
BANDGAP = f"{WITMAN}/bandgapdata"
PRETRAIN = f"{WITMAN}/pretraindata"
MP_SUBSET = 40


# --------------------------------------------------------------------------- fake origin


def _origin(name: str) -> catalog.Origin:
    return catalog.get_dataset(name).origin


def _codeload_tar(origin: catalog.Origin, files: dict[str, bytes]) -> bytes:
    """A tar.gz laid out like codeload's: pax comment, folder entries, ``{repo}-{commit}/`` top."""
    top = f"{origin.repo}-{origin.commit}"
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": origin.commit}, compresslevel=1
    ) as tar:
        folders = sorted({str(Path(p).parent) for p in files if "/" in p})
        for folder in [""] + folders:
            info = tarfile.TarInfo(f"{top}/{folder}".rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o775
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{path}")
            info.size, info.mode = len(data), 0o664
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read(rel: str) -> bytes:
    return (SHARED / rel).read_bytes()


def _witman_files() -> dict[str, bytes]:
    """mwitman1/cgcnndefect paths: structures/ = cgcnn/*.cif, splits/X.csv = cgcnn/id_prop.csv.X ..."""
    root = SHARED / "witman2023_vacancies"
    files = {"LICENSE": _read("witman2023_vacancies/LICENSE"), f"{WITMAN}/cgcnn/id_prop.csv.all": _read("witman2023_vacancies/id_prop.csv")}
    for cif in (root / "structures").iterdir():
        files[f"{WITMAN}/cgcnn/{cif.name}"] = cif.read_bytes()
    for split in (root / "splits").iterdir():
        files[f"{WITMAN}/cgcnn/id_prop.csv.{split.stem}"] = split.read_bytes()
    for host in (root / "hosts").iterdir():
        files[f"{WITMAN}/csvs/{host.name}"] = host.read_bytes()
    # things the dataset does not take
    files[f"{WITMAN}/cgcnn/0009491-Co1.globals"] = b"1.0\n"
    files[f"{WITMAN}/cgcnn/model-1.00k0_ve_vg_vs/test_results.csv"] = b"x,1,2\n"
    files["cgcnndefect/data.py"] = b"# code\n"
    return files


def _mp_subset() -> dict[str, bytes]:
    """The first MP_SUBSET CIFs of the shipped structures.tar.gz."""
    out: dict[str, bytes] = {}
    with tarfile.open(SHARED / "mp_formation_energy" / "structures.tar.gz") as tar:
        for member in tar:
            if member.isfile():
                out[member.name] = tar.extractfile(member).read()
                if len(out) == MP_SUBSET:
                    break
    return out


def _mp_id_prop(cifs: dict[str, bytes]) -> bytes:
    wanted = {name[:-4] for name in cifs}
    lines = _read("mp_formation_energy/id_prop.csv").splitlines(keepends=True)
    return b"".join(line for line in lines if line.split(b",")[0].decode() in wanted)


def _garrigus_files() -> dict[str, bytes]:
    """justinmgarrigus/cgcnndefect: bandgapdata (full, with repeated rows and a stray CIF) + a pretraindata subset."""
    root = SHARED / "oxide_bandgaps"
    files = {"LICENSE": _read("oxide_bandgaps/LICENSE")}
    for cif in (root / "structures").iterdir():
        files[f"{BANDGAP}/{cif.name}"] = cif.read_bytes()
    rows = _read("oxide_bandgaps/id_prop.csv").splitlines(keepends=True)
    repeated = [row for i, row in enumerate(rows) for _ in range(1 + i % 3)]  # like the source: rows repeated
    files[f"{BANDGAP}/id_prop.csv.bandgap"] = b"".join(repeated)
    files[f"{BANDGAP}/Sr(SbO3)2 (1).cif"] = files[f"{BANDGAP}/Sr(SbO3)2.cif"]  # the stray duplicate
    files[f"{BANDGAP}/Sr(SbO3)2.cif:Zone.Identifier"] = b"[ZoneTransfer]\r\nZoneId=3\r\n"
    cifs = _mp_subset()
    for name, data in cifs.items():
        files[f"{PRETRAIN}/{name}"] = data
    files[f"{PRETRAIN}/id_prop.csv"] = _mp_id_prop(cifs)
    files[f"{PRETRAIN}/id_prop.csv.pretrain10pct"] = b"mp-1,0.1\n"
    return files


def _cgcnn_files(corrupt: bool = False) -> dict[str, bytes]:
    """txie-93/cgcnn: pre-trained/*, atom_init.json from data/sample-regression, LICENSE at the root."""
    root = SHARED / "cgcnn_pretrained"
    files = {"LICENSE": _read("cgcnn_pretrained/LICENSE"), "main.py": b"# code\n"}
    for path in root.iterdir():
        if path.name.endswith(".pth.tar") or path.name == "README.md":
            files[f"pre-trained/{path.name}"] = path.read_bytes()
    files["data/sample-regression/atom_init.json"] = _read("cgcnn_pretrained/atom_init.json")
    files["data/sample-classification/atom_init.json"] = _read("cgcnn_pretrained/atom_init.json")
    if corrupt:
        data = bytearray(files["pre-trained/band-gap.pth.tar"])
        data[1000] ^= 0xFF
        files["pre-trained/band-gap.pth.tar"] = bytes(data)
    return files


class _Server:
    """Threaded HTTP server on 127.0.0.1: path -> bytes, optional truncation, request log."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                data = server.routes.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.truncated:
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, origin: catalog.Origin, files: dict[str, bytes], prefix: str = "") -> str:
        """Serve the archive of ``files`` for ``origin``; returns the base URL to use."""
        path = f"{prefix}/{origin.owner}/{origin.repo}/tar.gz/{origin.commit}"
        self.routes[path] = _codeload_tar(origin, files)
        return self.url + prefix

    def count(self, origin: catalog.Origin) -> int:
        return sum(p.endswith(f"/{origin.owner}/{origin.repo}/tar.gz/{origin.commit}") for p in self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    srv.serve(_origin("cgcnn_pretrained"), _cgcnn_files())
    srv.serve(_origin("oxide_bandgaps"), _garrigus_files())
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("ADEX_NO_PROGRESS", "1")
    monkeypatch.setenv("ADEX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(catalog.BASE_URL_ENV, raising=False)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _mp_manifest(cifs: dict[str, bytes]) -> dict:
    """The shipped manifest with the MP entry replaced by one for the MP_SUBSET CIFs."""
    manifest = copy.deepcopy(checksums.load_manifest())
    entry = manifest["datasets"]["mp_formation_energy"]
    id_prop = _mp_id_prop(cifs)
    entry["files"]["id_prop.csv"] = {"sha256": hashlib.sha256(id_prop).hexdigest(), "size": len(id_prop)}
    pairs = [(name, hashlib.sha256(data).hexdigest()) for name, data in cifs.items()]
    entry["archives"] = {"structures.tar.gz": {"content_digest": checksums.tree_digest(pairs), "count": len(cifs)}}
    return manifest


# --------------------------------------------------------------------------- manifest


def test_manifest_is_small_and_matches_manifest_md():
    path = checksums.default_manifest_path()
    assert path.stat().st_size < 300_000
    manifest = checksums.load_manifest()
    assert catalog.dataset_names() == sorted(manifest["datasets"]) == NAMES
    text = (SHARED / "MANIFEST.md").read_text()
    for name in NAMES:
        origin = catalog.get_dataset(name).origin
        assert f"{origin.owner}/{origin.repo}" in text or name == "oxide_bandgaps"  # "same repository"
        assert origin.commit in text
        assert origin.folder.rsplit("/", 1)[-1] in text
    assert manifest["datasets"]["mp_formation_energy"]["archives"]["structures.tar.gz"]["count"] == 36835
    assert manifest["datasets"]["witman2023_vacancies"]["trees"]["structures"]["count"] == 1481
    assert manifest["datasets"]["oxide_bandgaps"]["trees"]["structures"]["count"] == 824


def test_one_dataset_table():
    """The catalogue is the table; the manifest holds only checksums, adex.datasets derives its sets."""
    from adex.datasets import DATASETS

    for name, entry in checksums.load_manifest()["datasets"].items():
        assert set(entry) <= {"files", "trees", "archives"}, name
        dataset = catalog.get_dataset(name)
        assert set(entry.get("trees", {})) == set(dataset.trees) and set(entry.get("archives", {})) == set(dataset.archives)
    assert {n: (s.target, s.unit, s.required) for n, s in DATASETS.items()} == {
        "mp_formation_energy": ("formation_energy_per_atom", "eV/atom", ("id_prop.csv", "structures.tar.gz")),
        "oxide_bandgaps": ("band_gap", "eV", ("id_prop.csv", "structures")),
    }
    assert set(derived.DERIVE_STEPS) <= set(catalog.CATALOG)


def test_manifest_regenerates_from_shipped_data():
    """`python -m adex.download make-manifest --from SHARED` gives the committed file."""
    assert checksums.build_manifest(SHARED) == checksums.load_manifest()


def test_shipped_data_verifies():
    for name in ("cgcnn_pretrained", "oxide_bandgaps", "witman2023_vacancies"):
        result = checksums.verify_dataset(name, SHARED / name)
        assert result.files > 0


def test_tree_digest_is_order_independent():
    pairs = [("b.cif", "2" * 64), ("a.cif", "1" * 64)]
    expected = hashlib.sha256(f"a.cif {'1' * 64}\nb.cif {'2' * 64}\n".encode()).hexdigest()
    assert checksums.tree_digest(pairs) == checksums.tree_digest(reversed(pairs)) == expected


# --------------------------------------------------------------------------- full downloads


def test_download_cgcnn_pretrained(server, tmp_path):
    root = tmp_path / "data"
    [result] = dl.download(["cgcnn_pretrained"], root, base_url=server.url, progress=False)
    assert result.status == "downloaded" and result.path == root / "cgcnn_pretrained"
    shipped = sorted(p.name for p in (SHARED / "cgcnn_pretrained").iterdir())
    assert sorted(p.name for p in result.path.iterdir()) == shipped
    for name in shipped:
        assert (result.path / name).read_bytes() == _read(f"cgcnn_pretrained/{name}")
    assert _leftovers(root) == ["cgcnn_pretrained"]  # no temporary folder left


def test_download_oxide_bandgaps_dedupes_and_drops_stray_cif(server, tmp_path):
    [result] = dl.download(["oxide_bandgaps"], tmp_path, base_url=server.url, progress=False)
    out = result.path
    assert (out / "id_prop.csv").read_bytes() == _read("oxide_bandgaps/id_prop.csv")
    assert sorted(p.name for p in (out / "structures").iterdir()) == sorted(
        p.name for p in (SHARED / "oxide_bandgaps" / "structures").iterdir()
    )
    assert any("Sr(SbO3)2 (1).cif" in note for note in result.notes)
    assert any("repeated rows" in note for note in result.notes)
    assert (out / "LICENSE").read_bytes() == _read("oxide_bandgaps/LICENSE")


WITMAN_HOSTS = ("0009491", "0009494", "0289862", "0010021", "0107269")


def _witman_subset(hosts=WITMAN_HOSTS) -> tuple[dict[str, bytes], dict]:
    """Archive files and manifest for the vacancies of a few hosts (all splits kept)."""
    files = {
        path: data
        for path, data in _witman_files().items()
        if not path.startswith((f"{WITMAN}/cgcnn/0", f"{WITMAN}/csvs/")) or any(f"/{h}-" in path or f".{h}." in path for h in hosts)
    }
    keep = lambda line: line.split(b"-", 1)[0].decode() in hosts  # noqa: E731
    id_prop = b"".join(l for l in _read("witman2023_vacancies/id_prop.csv").splitlines(keepends=True) if keep(l))
    files[f"{WITMAN}/cgcnn/id_prop.csv.all"] = id_prop
    header, *rows = _read("witman2023_vacancies/vacancies.csv").splitlines(keepends=True)
    vacancies = header + b"".join(row for row in rows if keep(row))
    manifest = copy.deepcopy(checksums.load_manifest())
    entry = manifest["datasets"]["witman2023_vacancies"]
    entry["files"] = {
        rel: spec
        for rel, spec in entry["files"].items()
        if not rel.startswith("hosts/") or rel.split(".")[1] in hosts
    }
    for rel, data in (("id_prop.csv", id_prop), ("vacancies.csv", vacancies)):
        entry["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    cifs = [(p.rsplit("/", 1)[1], hashlib.sha256(d).hexdigest()) for p, d in files.items() if p.endswith(".cif")]
    entry["trees"]["structures"] = {"digest": checksums.tree_digest(cifs), "count": len(cifs), "size": 0}
    return files, manifest


def test_download_witman_subset_rebuilds_vacancies_csv_byte_for_byte(tmp_path):
    """Full path (archive -> layout -> derived vacancies.csv -> checksums) on 5 hosts."""
    files, manifest = _witman_subset()
    srv = _Server()
    try:
        base = srv.serve(_origin("witman2023_vacancies"), files)
        [result] = dl.download(["witman2023_vacancies"], tmp_path, base_url=base, manifest=manifest, progress=False)
    finally:
        srv.close()
    out = result.path
    header, *rows = (out / "vacancies.csv").read_bytes().splitlines(keepends=True)
    shipped = _read("witman2023_vacancies/vacancies.csv").splitlines(keepends=True)
    assert header == shipped[0] and len(rows) > 20 and set(rows) <= set(shipped)
    assert len(list((out / "splits").iterdir())) == 152
    assert sorted(p.name for p in (out / "hosts").iterdir()) == sorted(f"NREL_MatDb.{h}.csv" for h in WITMAN_HOSTS)
    assert not list(out.rglob("*.globals")) and not (out / "model-1.00k0_ve_vg_vs").exists()
    assert _leftovers(tmp_path) == ["witman2023_vacancies"]


def test_vacancies_csv_same_with_worker_processes(tmp_path):
    files, _ = _witman_subset(WITMAN_HOSTS[:2])
    (tmp_path / "structures").mkdir()
    for path, data in files.items():
        if path.endswith(".cif"):
            (tmp_path / "structures" / path.rsplit("/", 1)[1]).write_bytes(data)
    (tmp_path / "id_prop.csv").write_bytes(files[f"{WITMAN}/cgcnn/id_prop.csv.all"])
    serial = derived.build_vacancies_csv(tmp_path, workers=1).read_bytes()
    assert derived.build_vacancies_csv(tmp_path, workers=2).read_bytes() == serial


def test_download_mp_subset_shares_archive_with_oxide(server, tmp_path):
    """Reduced MP set (explicit manifest); oxide and MP come from one archive request."""
    cifs = _mp_subset()
    manifest = _mp_manifest(cifs)
    before = server.count(_origin("oxide_bandgaps"))
    results = dl.download(
        ["mp_formation_energy", "oxide_bandgaps"], tmp_path, base_url=server.url, manifest=manifest, progress=False
    )
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert server.count(_origin("oxide_bandgaps")) == before + 1
    mp = results[0].path
    assert sorted(p.name for p in mp.iterdir()) == ["LICENSE", "id_prop.csv", "structures.tar.gz"]
    with tarfile.open(mp / "structures.tar.gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(cifs)
        assert all(m.mode == 0o664 and m.uname == "root" and m.mtime == 1577836800 for m in members)
        assert all(tar.extractfile(m).read() == cifs[m.name] for m in members)
    assert checksums.verify_dataset("mp_formation_energy", mp, manifest).files == 3


def test_present_dataset_is_not_downloaded_again_unless_forced(server, tmp_path):
    origin = _origin("cgcnn_pretrained")
    dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, progress=False)
    count = server.count(origin)
    [again] = dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, progress=False)
    assert again.status == "present" and server.count(origin) == count
    [forced] = dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, force=True, progress=False)
    assert forced.status == "downloaded" and server.count(origin) == count + 1
    assert _leftovers(tmp_path) == ["cgcnn_pretrained"]


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.BASE_URL_ENV, server.url)
    [result] = dl.download(["cgcnn_pretrained"], tmp_path, progress=False)
    assert result.status == "downloaded"


def test_default_destination_is_adex_home_data(server, tmp_path):
    path = dl.download_dataset("cgcnn_pretrained", base_url=server.url, progress=False)
    assert path == tmp_path / "home" / "data" / "cgcnn_pretrained"


def test_file_url_mirror(tmp_path):
    """A folder laid out like codeload works as a mirror through a file:// base URL."""
    origin = _origin("cgcnn_pretrained")
    mirror = tmp_path / "mirror" / origin.owner / origin.repo / "tar.gz"
    mirror.mkdir(parents=True)
    (mirror / origin.commit).write_bytes(_codeload_tar(origin, _cgcnn_files()))
    [result] = dl.download(["cgcnn_pretrained"], tmp_path / "data", base_url=(tmp_path / "mirror").as_uri(), progress=False)
    assert result.status == "downloaded"


@pytest.mark.parametrize("with_gzip", [True, False])
def test_pack_structures_keeps_members(tmp_path, monkeypatch, with_gzip):
    """Packed with GNU gzip, or zlib when it is absent: same members either way."""
    import shutil

    if with_gzip and not shutil.which("gzip"):
        pytest.skip("GNU gzip not installed")
    if not with_gzip:
        monkeypatch.setattr(archive.shutil, "which", lambda name: None)
    cifs = dict(list(_mp_subset().items())[:10])
    (tmp_path / "in").mkdir()
    for name, data in cifs.items():
        (tmp_path / "in" / name).write_bytes(data)
    assert archive.pack_structures(tmp_path / "in", tmp_path / "out.tar.gz") is with_gzip
    digest, count = checksums.tar_content_digest(tmp_path / "out.tar.gz")
    assert count == 10 and digest == checksums.tree_digest((n, hashlib.sha256(d).hexdigest()) for n, d in cifs.items())


# --------------------------------------------------------------------------- failures


def test_checksum_mismatch_leaves_nothing(tmp_path):
    srv = _Server()
    try:
        base = srv.serve(_origin("cgcnn_pretrained"), _cgcnn_files(corrupt=True))
        with pytest.raises(DataError, match=r"band-gap\.pth\.tar does not match its checksum"):
            dl.download(["cgcnn_pretrained"], tmp_path / "data", base_url=base, progress=False)
    finally:
        srv.close()
    assert _leftovers(tmp_path / "data") == []


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(DataError) as info:
        dl.download(["nope"], tmp_path, progress=False)
    message = str(info.value)
    assert "nope" in message and all(name in message for name in NAMES)


def test_unreachable_server_is_one_line_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as info:
        dl.download(["cgcnn_pretrained"], tmp_path / "data", base_url=f"http://127.0.0.1:{port}", progress=False, timeout=5)
    message = str(info.value)
    assert "unreachable" in message and "cgcnn_pretrained" in message and "\n" not in message
    assert not (tmp_path / "data").exists()  # a data folder created for this download is removed again


def test_http_error_and_interrupted_download(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url + "/missing", progress=False)
    origin = _origin("cgcnn_pretrained")
    base = server.serve(origin, _cgcnn_files(), prefix="/truncated")
    server.truncated.add(f"/truncated/{origin.owner}/{origin.repo}/tar.gz/{origin.commit}")
    with pytest.raises(DataError, match="interrupted"):
        dl.download(["cgcnn_pretrained"], tmp_path, base_url=base, progress=False)
    server.routes[f"/garbage/{origin.owner}/{origin.repo}/tar.gz/{origin.commit}"] = b"<html>rate limited</html>"
    with pytest.raises(DataError, match="not a readable tar.gz"):
        dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url + "/garbage", progress=False)
    assert _leftovers(tmp_path) == []


def test_existing_corrupt_copy_needs_force(server, tmp_path):
    dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, progress=False)
    (tmp_path / "cgcnn_pretrained" / "atom_init.json").write_text("{}")
    with pytest.raises(DataError, match=r"atom_init\.json.*--force"):
        dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, progress=False)
    with pytest.raises(DataError, match=r"cgcnn_pretrained: atom_init\.json does not match its checksum"):
        checksums.verify_dataset("cgcnn_pretrained", tmp_path / "cgcnn_pretrained")
    dl.download(["cgcnn_pretrained"], tmp_path, base_url=server.url, force=True, progress=False)
    checksums.verify_dataset("cgcnn_pretrained", tmp_path / "cgcnn_pretrained")


def test_tree_mismatch_names_the_folder(server, tmp_path):
    dl.download(["oxide_bandgaps"], tmp_path, base_url=server.url, progress=False)
    (tmp_path / "oxide_bandgaps" / "structures" / "extra.cif").write_text("data_x\n")
    with pytest.raises(DataError, match=r"oxide_bandgaps: structures/ does not match its checksum \(825 files"):
        checksums.verify_dataset("oxide_bandgaps", tmp_path / "oxide_bandgaps")


# --------------------------------------------------------------------------- CLI


def test_cli_download_list_verify(server, tmp_path, capsys):
    dest = tmp_path / "data"
    code = main(["data", "download", "cgcnn_pretrained", "--dest", str(dest), "--base-url", server.url, "--no-progress"])
    assert code == 0
    assert "cgcnn_pretrained: downloaded and verified" in capsys.readouterr().out
    assert main(["data", "verify", "--data", str(dest)]) == 0
    assert "cgcnn_pretrained: ok" in capsys.readouterr().out
    assert main(["data", "list", "--data", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "cgcnn_pretrained" in out and "present" in out and "missing" in out


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["data", "download", "nope", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nope'") and "witman2023_vacancies" in err
    assert main(["data", "verify", "oxide_bandgaps", "--data", str(tmp_path)]) == 2
    assert "error: oxide_bandgaps: not found" in capsys.readouterr().err


def test_make_manifest_entry_point(tmp_path):
    out = tmp_path / "datasets.json"
    (tmp_path / "src").mkdir()
    for name in ("cgcnn_pretrained",):
        os.symlink(SHARED / name, tmp_path / "src" / name)
    manifest = checksums.build_manifest(tmp_path / "src", ["cgcnn_pretrained"])
    assert manifest["datasets"]["cgcnn_pretrained"] == checksums.load_manifest()["datasets"]["cgcnn_pretrained"]
    assert dl.main(["make-manifest", "--from", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not out.exists()


# --------------------------------------------------------------------------- slow: full Witman and MP


@pytest.mark.slow
def test_download_full_witman2023_vacancies(tmp_path):
    """All 1,481 vacancies through the real manifest (ASE reads each CIF: ~10 s of CPU)."""
    srv = _Server()
    try:
        base = srv.serve(_origin("witman2023_vacancies"), _witman_files())
        [result] = dl.download(["witman2023_vacancies"], tmp_path, base_url=base, progress=False)
    finally:
        srv.close()
    assert (result.path / "vacancies.csv").read_bytes() == _read("witman2023_vacancies/vacancies.csv")
    assert _leftovers(tmp_path) == ["witman2023_vacancies"]


@pytest.mark.slow
def test_download_full_mp_formation_energy(tmp_path):
    """All 36,835 CIFs through the real manifest; byte-identical when GNU gzip is present."""
    import shutil

    origin = _origin("mp_formation_energy")
    files = {"LICENSE": _read("mp_formation_energy/LICENSE"), f"{PRETRAIN}/id_prop.csv": _read("mp_formation_energy/id_prop.csv")}
    with tarfile.open(SHARED / "mp_formation_energy" / "structures.tar.gz") as tar:
        for member in tar:
            if member.isfile():
                files[f"{PRETRAIN}/{member.name}"] = tar.extractfile(member).read()
    srv = _Server()
    try:
        base = srv.serve(origin, files)
        [result] = dl.download(["mp_formation_energy"], tmp_path, base_url=base, progress=False)
    finally:
        srv.close()
    assert result.status == "downloaded"
    same = (result.path / "structures.tar.gz").read_bytes() == _read("mp_formation_energy/structures.tar.gz")
    assert same == bool(shutil.which("gzip"))
