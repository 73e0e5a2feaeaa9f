"""The dataset table: the one place that says which datasets adex knows.

Each :class:`Dataset` names where it is published (:class:`Origin`: a folder of a GitHub
repository at a pinned commit), its license, how its local folder is laid out (the
:class:`Rule` s mapping source paths to local ones, the folders and archives checked by
one digest) and, for the pristine-crystal sets advisors train on, the target and unit.
Everything else is derived from this table:

* :mod:`adex.datasets` reads the pristine sets (``DATASETS`` = the entries with a target);
* :mod:`adex.download` rebuilds a dataset folder from its origin;
* ``adex/data/datasets.json`` holds only the checksums of each folder, generated from the
  shipped data with ``python -m adex.download make-manifest --from DIR``
  (see :mod:`adex.checksums`).

Pure data: importing this module reads no file and imports nothing heavy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from adex.errors import DataError

DEFAULT_BASE_URL = "https://codeload.github.com"
BASE_URL_ENV = "ADEX_DOWNLOAD_URL"
# Staging sub-folder of extracted files that a derive step consumes (the MP CIFs, packed
# into structures.tar.gz); never part of an installed dataset.
PACK_DIR = ".pack"


@dataclass(frozen=True)
class Origin:
    """Where a dataset is published: a folder of a GitHub repository at a fixed commit."""

    owner: str
    repo: str
    commit: str
    folder: str

    def archive_url(self, base_url: str | None = None) -> str:
        """URL of the repository archive at :attr:`commit` (codeload layout)."""
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.owner}/{self.repo}/tar.gz/{self.commit}"

    @property
    def web_url(self) -> str:
        """Human-readable address of the source folder."""
        return f"https://github.com/{self.owner}/{self.repo}/tree/{self.commit}/{self.folder}".rstrip("/")

    @property
    def key(self) -> tuple[str, str, str]:
        """Identifies the archive: datasets with the same key share one download."""
        return (self.owner, self.repo, self.commit)

    def to_dict(self) -> dict[str, str]:
        return {"owner": self.owner, "repo": self.repo, "commit": self.commit, "folder": self.folder}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> "Origin":
        try:
            return cls(str(data["owner"]), str(data["repo"]), str(data["commit"]), str(data.get("folder", "")))
        except KeyError as exc:
            raise DataError(f"dataset origin lacks {exc.args[0]!r}") from None


@dataclass(frozen=True)
class Rule:
    """Maps source paths matching ``pattern`` to the local path ``dest``.

    ``pattern`` is a regular expression matched against the whole path relative to the
    origin folder (relative to the repository root if ``from_root``); ``dest`` is a
    :meth:`str.format` template filled with the pattern's named groups.
    """

    pattern: str
    dest: str
    from_root: bool = False

    def apply(self, path: str, folder: str) -> str | None:
        """Local path for repository path ``path``, or None if the rule does not match."""
        prefix = "" if self.from_root or not folder.strip("/") else folder.strip("/") + "/"
        if not path.startswith(prefix):
            return None
        match = re.fullmatch(self.pattern, path[len(prefix):])
        if match is None:
            return None
        return self.dest.format(**match.groupdict())


@dataclass(frozen=True)
class Dataset:
    """One dataset: what it is, where it comes from and how its folder is laid out.

    ``required`` are the paths that must exist for adex to use the folder; for the
    pristine sets they are also, in this order, the inputs hashed into the graph cache
    key (:func:`adex.datasets.load_dataset`). ``rules`` are tried in order: the first
    that matches a source member decides its local path, and when several members map to
    the same local path the earliest rule wins. ``trees`` are folders checked by one
    digest; ``archives`` are tar files checked by the digest of their members (for a
    pristine set, an archive holds its structures). ``target``/``unit``: the regression
    target of a pristine-crystal set, None for the others.
    """

    name: str
    description: str
    license: str
    origin: Origin
    required: tuple[str, ...]
    rules: tuple[Rule, ...]
    trees: tuple[str, ...] = ()
    archives: tuple[str, ...] = ()
    target: str | None = None
    unit: str | None = None


_LICENSE_RULE = Rule(r"LICENSE", "LICENSE", from_root=True)
_WITMAN_FOLDER = "cgcnndefect/examples/OxideMLpaper1"
_GARRIGUS = ("justinmgarrigus", "cgcnndefect", "415ee8ca56c4b7c17e436dcd43fc8587b54117dc")

CATALOG: dict[str, Dataset] = {
    "witman2023_vacancies": Dataset(
        name="witman2023_vacancies",
        description="1,481 neutral vacancy formation enthalpies in 199 oxide hosts (Witman et al. 2023)",
        license="MIT",
        origin=Origin("mwitman1", "cgcnndefect", "985a248f3cd72c94a63090cb387e043b603ac2f3", _WITMAN_FOLDER),
        required=("vacancies.csv", "structures"),
        rules=(
            _LICENSE_RULE,
            Rule(r"cgcnn/(?P<name>[^/]+\.cif)", "structures/{name}"),
            Rule(r"cgcnn/id_prop\.csv\.all", "id_prop.csv"),
            Rule(r"cgcnn/id_prop\.csv\.(?P<split>(?:train|hold)_[^/]+)", "splits/{split}.csv"),
            Rule(r"csvs/(?P<name>[^/]+\.csv)", "hosts/{name}"),
        ),
        trees=("structures",),
    ),
    "mp_formation_energy": Dataset(
        name="mp_formation_energy",
        description="36,835 Materials Project crystals, formation energy per atom (eV/atom)",
        license="MIT (code repository); Materials Project data CC BY 4.0",
        origin=Origin(*_GARRIGUS, f"{_WITMAN_FOLDER}/pretraindata"),
        required=("id_prop.csv", "structures.tar.gz"),
        rules=(
            _LICENSE_RULE,
            Rule(r"id_prop\.csv", "id_prop.csv"),
            Rule(r"(?P<name>[^/]+\.cif)", f"{PACK_DIR}/structures/{{name}}"),
        ),
        archives=("structures.tar.gz",),
        target="formation_energy_per_atom",
        unit="eV/atom",
    ),
    "oxide_bandgaps": Dataset(
        name="oxide_bandgaps",
        description="824 oxide crystals with DFT band gaps (eV), Kumagai et al.",
        license="MIT (code repository); data CC BY 4.0",
        origin=Origin(*_GARRIGUS, f"{_WITMAN_FOLDER}/bandgapdata"),
        required=("id_prop.csv", "structures"),
        rules=(
            _LICENSE_RULE,
            Rule(r"(?P<name>[^/]+\.cif)", "structures/{name}"),
            Rule(r"id_prop\.csv\.bandgap", "id_prop.csv"),
        ),
        trees=("structures",),
        target="band_gap",
        unit="eV",
    ),
    "cgcnn_pretrained": Dataset(
        name="cgcnn_pretrained",
        description="original CGCNN pretrained checkpoints and atom_init.json (Xie & Grossman 2018)",
        license="MIT",
        origin=Origin("txie-93", "cgcnn", "f42ab233c4ee0c416879d6bc2d22a264418413ad", "pre-trained"),
        required=("atom_init.json",),
        rules=(
            _LICENSE_RULE,
            Rule(r"(?P<name>[^/]+\.pth\.tar)", "{name}"),
            Rule(r"README\.md", "README.md"),
            # atom_init.json: beside the checkpoints if there, else the one the CGCNN
            # README's predict example uses (identical in both sample data folders).
            Rule(r"atom_init\.json", "atom_init.json"),
            Rule(r"data/sample-regression/atom_init\.json", "atom_init.json", from_root=True),
        ),
    ),
}


def dataset_names() -> list[str]:
    """Names of the datasets adex knows, sorted."""
    return sorted(CATALOG)


def get_dataset(name: str) -> Dataset:
    """The table entry of ``name``; DataError listing the known names if unknown."""
    dataset = CATALOG.get(name)
    if dataset is None:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")
    return dataset
