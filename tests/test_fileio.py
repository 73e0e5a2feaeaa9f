"""Atomic writes and the flat array files of the prediction cache (adex.fileio)."""
from __future__ import annotations

import numpy as np
import pytest

from adex.fileio import atomic_write_bytes, pack_arrays, unpack_arrays


def test_arrays_round_trip_exactly() -> None:
    arrays = {
        "ints": np.arange(7, dtype=np.int64).reshape(7, 1),
        "floats": np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32),
        "empty": np.zeros((0, 3), np.int16),
        "flags": np.array([True, False]),
        "labels": np.array(["O", "Sr", "Ti"]),
        "scalar": np.float64(1.5),
        "strided": np.arange(20.0)[::3],  # not contiguous
    }
    out = unpack_arrays(pack_arrays(arrays))
    assert list(out) == list(arrays)
    for name, value in arrays.items():
        value = np.asarray(value)
        assert out[name].dtype == value.dtype and out[name].shape == value.shape, name
        assert np.array_equal(out[name], value), name
    out["ints"][0, 0] = 42  # writable copies


def test_packed_vacancies_round_trip(tmp_path) -> None:
    """The prediction cache's format holds a PackedVacancies exactly (same arrays as .npz)."""
    from pymatgen.core import Lattice, Structure

    from adex.expert.data import PackedVacancies, featurize_vacancy
    from adex.graphs import Featurizer, FeaturizerSettings
    from adex.supercell import SupercellSettings

    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    featurizer = Featurizer(FeaturizerSettings(cutoff=3.5, max_neighbors=8))
    packed = PackedVacancies.concatenate([featurize_vacancy(mgo, site, f"mgo#{site}", None, featurizer,
                                                            SupercellSettings(min_image_distance=7.0)) for site in (0, 4)])
    again = PackedVacancies.from_bytes(packed.to_bytes())
    packed.save(tmp_path / "p.npz")
    from_npz = PackedVacancies.load(tmp_path / "p.npz")
    for name, value in packed.arrays().items():
        assert np.array_equal(again.arrays()[name], value), name
        assert np.array_equal(from_npz.arrays()[name], value), name


@pytest.mark.parametrize("damage", ["magic", "truncate", "header"])
def test_damaged_array_files_are_refused(damage) -> None:
    data = pack_arrays({"x": np.arange(100, dtype=np.float64)})
    if damage == "magic":
        data = b"PK" + data[2:]
    elif damage == "truncate":
        data = data[:-50]
    else:
        data = data[:20] + b"{not json" + data[29:]
    with pytest.raises(ValueError):
        unpack_arrays(data)


def test_object_arrays_are_not_stored() -> None:
    with pytest.raises(TypeError, match="dtype"):
        pack_arrays({"bad": np.array([{"a": 1}], dtype=object)})


def test_atomic_write_replaces_whole_files(tmp_path) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]  # no temporary files left
