"""Tests of the model registry (adex.registry): storage, references, integrity, CLI."""
from __future__ import annotations

import json
import multiprocessing
import threading
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import adex.registry
from adex.cli import main
from adex.errors import IntegrityError, RegistryError
from adex.registry import Entry, Ref, Registry, ShadowWarning, open_registry, parse_ref
from adex.registry import store as store_module

WEIGHTS = "weights.safetensors"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapping of refs in CLI output
    return tmp_path / "home"


@pytest.fixture()
def builtin(tmp_path: Path) -> Path:
    return tmp_path / "builtin"


@pytest.fixture()
def reg(home: Path, builtin: Path) -> Registry:
    return Registry(builtin_root=builtin)


def put(reg: Registry, name: str = "bandgap", kind: str = "advisor", data: bytes = b"weights", **kw) -> Entry:
    files = {WEIGHTS: data, "model.json": b'{"class": "advisor"}'}
    return reg.register(kind, name, files, {"target": "band_gap", "unit": "eV"}, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- storage
def test_versions_increment_and_layout(reg: Registry, home: Path) -> None:
    entries = [put(reg, data=bytes([i]) * 10) for i in range(3)]
    assert [e.version for e in entries] == [1, 2, 3]
    versions = home / "registry" / "advisor" / "bandgap" / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["1", "2", "3"]  # no staging left over
    assert sorted(p.name for p in (versions / "2").iterdir()) == ["card.json", "model.json", WEIGHTS]
    assert (versions / "2" / WEIGHTS).read_bytes() == bytes([1]) * 10
    assert entries[1].path == versions / "2"
    assert reg.resolve("bandgap:2").read_file(WEIGHTS) == bytes([1]) * 10


def test_card_fields(reg: Registry) -> None:
    parent = put(reg)
    entry = reg.register("expert", "vac", {WEIGHTS: b"12345"}, {"note": "kept", "version": 99},
                         parents=["bandgap@latest"], primary_metric=("mae", 0.25))
    card = json.loads((entry.path / "card.json").read_text())
    assert card == entry.card
    assert (card["kind"], card["name"], card["version"], card["note"]) == ("expert", "vac", 1, "kept")
    created = datetime.fromisoformat(card["created"])
    assert created.utcoffset() == timedelta(0)
    assert card["files"] == {WEIGHTS: {"bytes": 5,
                                       "sha256": "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"}}
    assert card["parents"] == [parent.ref] == ["advisor/bandgap:1"]
    assert card["primary_metric"] == {"name": "mae", "value": 0.25}
    assert set(card["package_versions"]) == {"adex", "torch", "pymatgen", "numpy", "python"}
    assert card["package_versions"]["adex"] == adex.__version__


def test_register_validates_before_writing(reg: Registry, home: Path) -> None:
    with pytest.raises(RegistryError, match="no model 'ghost'"):
        put(reg, parents=["ghost:1"])
    for bad in [dict(name="a/b"), dict(name="..")]:
        with pytest.raises(RegistryError):
            put(reg, **bad)
    with pytest.raises(RegistryError, match="reserved"):
        reg.register("advisor", "x", {"card.json": b"{}"}, {})
    with pytest.raises(RegistryError, match="file name"):
        reg.register("advisor", "x", {"../evil": b""}, {})
    with pytest.raises(RegistryError, match="latest"):
        put(reg, aliases=["latest"])
    assert not (home / "registry").exists() or not any((home / "registry").rglob("card.json"))


def test_aliases_latest_best_and_tags(reg: Registry) -> None:
    put(reg, primary_metric=("mae", 0.5))
    put(reg, primary_metric=("mae", 0.3))
    put(reg, primary_metric=("mae", 0.4), aliases=["mytag"])
    stored = json.loads((reg.root / "advisor" / "bandgap" / "aliases.json").read_text())
    assert stored == {"latest": 3, "best": 2, "mytag": 3}
    assert reg.resolve("bandgap").version == 3
    assert reg.resolve("bandgap@best").version == 2
    assert reg.resolve("advisor/bandgap@mytag").aliases == ("latest", "mytag")

    assert reg.tag("bandgap:1", "mytag").aliases == ("mytag",)  # moved
    reg.tag("bandgap@best", "paper")  # created
    assert reg.resolve("bandgap@paper").version == 2
    assert reg.resolve("bandgap@mytag").version == 1
    with pytest.raises(RegistryError, match="managed automatically"):
        reg.tag("bandgap:1", "latest")
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.tag("bandgap:1", "12")
    put(reg)  # no metric: best stays
    assert reg.resolve("bandgap@best").version == 2
    assert reg.resolve("bandgap@latest").version == 4


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("text, expected", [
    ("bandgap", Ref("bandgap")),
    ("bandgap:3", Ref("bandgap", version=3)),
    ("bandgap@best", Ref("bandgap", alias="best")),
    ("advisor/bandgap:3", Ref("bandgap", kind="advisor", version=3)),
    ("builtin::bandgap@latest", Ref("bandgap", store="builtin", alias="latest")),
    ("user::expert/vac_2.1", Ref("vac_2.1", kind="expert", store="user")),
])
def test_parse_ref(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", ["", "bandgap:", "bandgap:0", "bandgap:x", "bandgap:1@best", "cloud::bandgap",
                                  "a/b/c", "/bandgap", "bandgap@", "bandgap@12", ".hidden", "band gap"])
def test_parse_ref_errors(text: str) -> None:
    with pytest.raises(RegistryError, match="invalid registry reference") as info:
        parse_ref(text)
    assert "\n" not in str(info.value)


def test_resolve_errors_say_what_exists(reg: Registry) -> None:
    put(reg, "bandgap")
    put(reg, "eform")
    put(reg, "vac", kind="expert")
    cases = {
        "advisor/bandgpa": "no advisor 'bandgpa' (known: bandgap, eform)",
        "bandgap:7": "no version 7 of advisor/bandgap (versions: 1)",
        "bandgap@best": "no alias @best for advisor/bandgap (aliases: latest)",
        "nope": "no model 'nope' (known: advisor/bandgap, advisor/eform, expert/vac)",
        "builtin::bandgap": "no model 'builtin::bandgap' (known: none)",
    }
    for ref, message in cases.items():
        with pytest.raises(RegistryError) as info:
            reg.resolve(ref)
        assert str(info.value) == message
    assert reg.resolve("vac", kind="expert").ref == "expert/vac:1"
    with pytest.raises(RegistryError, match="no expert 'bandgap'"):
        reg.resolve("bandgap", kind="expert")
    put(reg, "vac", kind="advisor")
    with pytest.raises(RegistryError, match="ambiguous"):
        reg.resolve("vac")


# --------------------------------------------------------------------------- integrity
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_tampering_is_detected(reg: Registry, damage: str) -> None:
    entry = put(reg, data=bytes(range(256)) * 4)
    put(reg, "other")
    path = entry.path / WEIGHTS
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[100] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-10]))
    else:
        path.unlink()
    expected = "missing" if damage == "delete" else "sha256 mismatch: tampered or truncated"
    for call in (lambda: entry.read_file(WEIGHTS), lambda: reg.resolve("bandgap").file_path(WEIGHTS)):
        with pytest.raises(IntegrityError, match=expected) as info:
            call()
        assert WEIGHTS in str(info.value) and entry.ref in str(info.value) and "\n" not in str(info.value)
    assert entry.read_file("model.json") == b'{"class": "advisor"}'  # untouched file still reads
    results = {e.ref: problem for e, problem in reg.verify()}
    assert results["advisor/other:1"] is None
    assert expected in results["advisor/bandgap:1"]
    assert reg.verify("other") == [(reg.resolve("other"), None)]


def test_unknown_file_and_broken_card(reg: Registry) -> None:
    entry = put(reg)
    with pytest.raises(RegistryError, match="has no file 'x.bin'"):
        entry.read_file("x.bin")
    (entry.path / "card.json").write_text("{not json")
    [(broken, problem)] = reg.verify()
    assert broken.problem and "card.json" in problem
    with pytest.raises(IntegrityError):
        reg.resolve("bandgap").read_file(WEIGHTS)


# --------------------------------------------------------------------------- concurrency
def _register_many(root: str, barrier, count: int) -> None:
    registry = Registry(root=Path(root), builtin_root=Path(root) / "no-builtin")
    barrier.wait()
    for i in range(count):
        registry.register("advisor", "race", {WEIGHTS: f"{i}".encode() * 1000}, {}, primary_metric=("mae", i))


def test_concurrent_register_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_register_many, args=(str(tmp_path), barrier, 4)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    registry = Registry(root=tmp_path, builtin_root=tmp_path / "no-builtin")
    entries = registry.list("advisor")
    assert [e.version for e in entries] == list(range(1, 9))
    assert all(e.card["version"] == e.version for e in entries)
    assert all(problem is None for _, problem in registry.verify())
    assert registry.resolve("race").version == 8
    assert registry.resolve("race@best").primary_metric == ("mae", 0.0)
    assert not [p for p in (tmp_path / "advisor" / "race" / "versions").iterdir() if not p.name.isdigit()]


def test_concurrent_register_threads(reg: Registry) -> None:
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        put(reg, "threads")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e.version for e in reg.list()] == [1, 2, 3, 4]


def test_publish_retries_when_number_taken(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    put(reg)
    put(reg)
    monkeypatch.setattr(store_module, "_highest_version", lambda _: 0)  # a stale view: 1 and 2 look free
    entry = put(reg, data=b"third")
    assert entry.version == 3 and entry.card["version"] == 3
    assert reg.resolve("bandgap:1").read_file(WEIGHTS) == b"weights"  # the winner's files are untouched
    assert entry.read_file(WEIGHTS) == b"third"


# --------------------------------------------------------------------------- removal
def test_remove_refuses_dependents_and_fixes_aliases(reg: Registry) -> None:
    put(reg, primary_metric=("mae", 0.1))
    put(reg, primary_metric=("mae", 0.2), aliases=["mytag"])
    put(reg, primary_metric=("mae", 0.3))
    child = reg.register("expert", "vac", {WEIGHTS: b"x"}, {}, parents=["advisor/bandgap@best"])
    assert [e.ref for e in reg.dependents(reg.resolve("bandgap:1"))] == [child.ref]
    with pytest.raises(RegistryError, match="cannot remove advisor/bandgap:1: expert/vac:1"):
        reg.remove("bandgap@best")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.remove("bandgap:9")

    assert reg.remove("bandgap").version == 3  # latest
    assert reg.resolve("bandgap").version == 2
    reg.remove("bandgap:2")
    aliases = json.loads((reg.root / "advisor" / "bandgap" / "aliases.json").read_text())
    assert aliases == {"latest": 1, "best": 1}  # mytag pointed at 2: dropped
    with pytest.raises(RegistryError, match="no alias @mytag"):
        reg.resolve("bandgap@mytag")
    assert put(reg).version == 4  # numbers are never reused
    reg.remove(child.ref)
    reg.remove("bandgap:1")
    assert [e.version for e in reg.list()] == [4]


# --------------------------------------------------------------------------- built-in store
def test_builtin_store_read_only_and_shadowing(reg: Registry, builtin: Path) -> None:
    shipped = Registry(root=builtin, builtin_root=builtin / "none")
    put(shipped, "bandgap", data=b"builtin")
    put(shipped, "eform")
    before = snapshot(builtin)

    entry = reg.resolve("eform")
    assert (entry.store, entry.ref, entry.shadows) == ("builtin", "builtin::advisor/eform:1", None)
    with pytest.raises(RegistryError, match="read-only"):
        reg.tag("eform", "mine")
    with pytest.raises(RegistryError, match="read-only"):
        reg.remove("builtin::eform:1")
    child = reg.register("expert", "vac", {WEIGHTS: b"x"}, {}, parents=["eform"])
    assert child.parents == ["builtin::advisor/eform:1"]

    put(reg, "bandgap", data=b"user")
    with pytest.warns(ShadowWarning, match="shadows the built-in"):
        shadowing = reg.resolve("bandgap")
    assert (shadowing.store, shadowing.shadows, shadowing.read_file(WEIGHTS)) == ("user", "builtin", b"user")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reg.resolve("builtin::bandgap").read_file(WEIGHTS) == b"builtin"
        assert reg.resolve("user::bandgap").store == "user"
    listed = [(e.store, e.kind, e.name, e.shadows) for e in reg.list()]
    assert listed == [("user", "advisor", "bandgap", "builtin"), ("builtin", "advisor", "bandgap", None),
                      ("builtin", "advisor", "eform", None), ("user", "expert", "vac", None)]
    assert snapshot(builtin) == before


def test_open_registry_uses_adex_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADEX_BUILTIN_REGISTRY")
    registry = open_registry()
    assert registry.root == home / "registry"
    assert registry.builtin_root == Path(adex.registry.__file__).resolve().parent / "builtin"
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(home / "elsewhere"))
    assert open_registry().builtin_root == home / "elsewhere"
    monkeypatch.delenv("ADEX_BUILTIN_REGISTRY")
    assert registry.list() == [] or all(e.store == "builtin" for e in registry.list())


# --------------------------------------------------------------------------- CLI
def test_cli(reg: Registry, home: Path, capsys: pytest.CaptureFixture) -> None:
    put(reg, primary_metric=("mae", 0.5))
    put(reg, primary_metric=("mae", 0.7))
    reg.register("expert", "vac", {WEIGHTS: b"x"}, {"note": "hello"}, parents=["bandgap:1"])
    capsys.readouterr()

    assert main(["registry", "list"]) == 0
    out = capsys.readouterr().out
    for text in ("store", "primary metric", "parents", "bandgap", "mae = 0.5", "advisor/bandgap:1", "best"):
        assert text in out
    assert main(["registry", "list", "--kind", "expert"]) == 0
    assert "bandgap " not in capsys.readouterr().out.replace("advisor/bandgap:1", "")

    assert main(["registry", "show", "expert/vac", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "package versions" in out
    assert json.loads(out[out.index("\n{") + 1:])["parents"] == ["advisor/bandgap:1"]

    assert main(["registry", "tag", "bandgap:2", "paper"]) == 0
    assert "tagged advisor/bandgap:2 as @paper" in capsys.readouterr().out
    assert reg.resolve("bandgap@paper").version == 2

    assert main(["registry", "verify"]) == 0
    assert capsys.readouterr().out.count("OK") == 3
    (reg.resolve("bandgap:2").path / WEIGHTS).write_bytes(b"evil")
    assert main(["registry", "verify"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  advisor/bandgap:2" in out and "sha256 mismatch" in out
    assert main(["registry", "verify", "bandgap:1"]) == 0
    capsys.readouterr()

    assert main(["registry", "remove", "bandgap:1"]) == 2
    assert "expert/vac:1" in capsys.readouterr().err
    assert main(["registry", "remove", "bandgap:2"]) == 0
    assert "removed advisor/bandgap:2" in capsys.readouterr().out

    assert main(["registry", "show", "bandgpa"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: no model 'bandgpa' (known: advisor/bandgap, expert/vac)\n"
    assert main(["registry"]) == 1


def test_cli_registry_option_and_shadow_warning(tmp_path: Path, home: Path, builtin: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "elsewhere"
    put(Registry(root=other, builtin_root=builtin), "eform")
    put(Registry(root=builtin, builtin_root=tmp_path / "none"), "eform")
    monkeypatch.setattr(store_module, "default_builtin_root", lambda: builtin)
    capsys.readouterr()
    assert main(["registry", "show", "eform", "--registry", str(other)]) == 0
    captured = capsys.readouterr()
    assert "warning: user model advisor/eform shadows the built-in one" in captured.err
    assert str(other) in captured.out
    assert main(["registry", "list"]) == 0  # default store ($ADEX_HOME) is empty: only the built-in
    out = capsys.readouterr().out
    assert "builtin" in out and "user " not in out
    assert main(["registry", "remove", "eform"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_export_copies_a_verified_version_into_another_store(tmp_path):
    from adex.errors import IntegrityError, RegistryError
    from adex.registry import Registry

    source = Registry(root=tmp_path / "user", builtin_root=tmp_path / "none")
    source.register("advisor", "bandgap", {"weights.bin": b"abc"}, {"description": "x"})
    source.register("advisor", "bandgap", {"weights.bin": b"abcd"}, {"description": "y"})
    target = source.export("bandgap:2", tmp_path / "shipped", card_notes={"how": "test"})
    assert target == tmp_path / "shipped" / "advisor" / "bandgap" / "versions" / "2"
    shipped = Registry(root=tmp_path / "other", builtin_root=tmp_path / "shipped")
    entry = shipped.resolve("bandgap")
    assert (entry.store, entry.version) == ("builtin", 2)
    assert entry.read_file("weights.bin") == b"abcd"
    assert entry.card["notes"] == {"how": "test"} and entry.card["exported_from"] == "advisor/bandgap:2"
    with pytest.raises(RegistryError, match="immutable"):
        source.export("bandgap:2", tmp_path / "shipped")
    (source.resolve("bandgap:1").path / "weights.bin").write_bytes(b"abX")
    with pytest.raises(IntegrityError):
        source.export("bandgap:1", tmp_path / "shipped")
    assert not (tmp_path / "shipped" / "advisor" / "bandgap" / "versions" / "1").exists()


def test_export_renumbers_and_keeps_only_shipped_parents(tmp_path):
    from adex.registry import Registry

    shipped_root = tmp_path / "shipped"
    source = Registry(root=tmp_path / "user", builtin_root=shipped_root)
    source.register("advisor", "bandgap", {"weights.bin": b"adv"}, {"description": "advisor"})
    source.export("bandgap:1", shipped_root)  # now builtin::advisor/bandgap:1 too (same files)
    source.register("expert", "vac", {"weights.bin": b"v1"}, {"description": "first"})
    source.register("expert", "vac", {"weights.bin": b"v2"}, {"description": "member"},
                    parents=["user::advisor/bandgap:1", "user::expert/vac:1"])
    # the destination already has expert/vac:1 and :2 (other models): the export gets number 3
    for n in (1, 2):
        (shipped_root / "expert" / "vac" / "versions").mkdir(parents=True, exist_ok=True)
    other = Registry(root=tmp_path / "other", builtin_root=tmp_path / "none")
    for text in (b"a", b"b"):
        other.register("expert", "vac", {"weights.bin": text}, {"description": "shipped earlier"})
    other.export("vac:1", shipped_root)
    other.export("vac:2", shipped_root)
    target = source.export("vac:2", shipped_root, card_notes={"how": "test"}, renumber=True, parents_as_builtin=True)
    assert target.name == "3"
    entry = Registry(root=tmp_path / "fresh", builtin_root=shipped_root).resolve("builtin::expert/vac:3")
    assert entry.read_file("weights.bin") == b"v2" and entry.card["version"] == 3
    # bandgap:1 is shipped with the same files; user expert/vac:1 is not (builtin vac:1 is another model)
    assert entry.card["parents"] == ["builtin::advisor/bandgap:1"]
    assert entry.card["notes"] == {"parents_not_shipped": ["expert/vac:1"], "how": "test"}


def test_export_under_another_name(tmp_path):
    from adex.errors import RegistryError
    from adex.registry import Registry

    source = Registry(root=tmp_path / "user", builtin_root=tmp_path / "none")
    source.register("expert", "vacancy", {"weights.bin": b"core"}, {"description": "x"})
    target = source.export("vacancy:1", tmp_path / "shipped", name="vacancy-core", renumber=True)
    assert target == tmp_path / "shipped" / "expert" / "vacancy-core" / "versions" / "1"
    entry = Registry(root=tmp_path / "other", builtin_root=tmp_path / "shipped").resolve("builtin::expert/vacancy-core")
    entry.verify()
    assert entry.card["name"] == "vacancy-core" and entry.card["exported_from"] == "expert/vacancy:1"
    assert entry.read_file("weights.bin") == b"core"
    with pytest.raises(RegistryError, match="name"):
        source.export("vacancy:1", tmp_path / "shipped", name="../evil")
