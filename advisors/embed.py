"""Advisor inference on structures: embeddings (the advisors' product) and properties."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from adex.graphs import Featurizer, PackedGraphs


@dataclass
class Embeddings:
    """Advisor outputs for B structures.

    Attributes:
        ids: str [B].
        crystal: float32 [B, F] per-crystal embeddings.
        atom: float32 [n_atoms_total, F] per-atom embeddings, structure ``b`` owning rows
            ``atom_ptr[b]:atom_ptr[b+1]`` in the structure's own site order.
        atom_ptr: int64 [B + 1].
        prediction: float64 [B] the advisor's property, in ``unit``.
        unit: unit of ``prediction``.
    """

    ids: np.ndarray
    crystal: np.ndarray
    atom: np.ndarray
    atom_ptr: np.ndarray
    prediction: np.ndarray
    unit: str

    def save(self, path: str | os.PathLike) -> None:
        """npz (plain arrays, loadable with ``np.load(allow_pickle=False)``)."""
        from io import BytesIO

        from adex.fileio import atomic_write_bytes

        buffer = BytesIO()
        np.savez(buffer, ids=self.ids.astype(str), crystal=self.crystal, atom=self.atom, atom_ptr=self.atom_ptr,
                 prediction=self.prediction, unit=np.array(self.unit))
        atomic_write_bytes(Path(path), buffer.getvalue())


@torch.no_grad()
def run_advisor(model, graphs: PackedGraphs, batch_size: int = 256) -> Embeddings:
    """Embeddings and predictions of ``model`` (an :class:`Advisor`, eval mode) on graphs."""
    model.eval()
    crystals, atoms, preds = [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = graphs.batch(np.arange(start, min(start + batch_size, len(graphs))))
        atom, crystal = model.embed(batch)
        atoms.append(atom.numpy())
        crystals.append(crystal.numpy())
        preds.append(model.normalizer.denorm(model.head(crystal)).double().numpy())
    width = model.embedding_width
    return Embeddings(
        ids=np.asarray(graphs.ids, dtype=str),
        crystal=np.concatenate(crystals) if crystals else np.zeros((0, width), np.float32),
        atom=np.concatenate(atoms) if atoms else np.zeros((0, width), np.float32),
        atom_ptr=graphs.node_ptr.copy(),
        prediction=np.concatenate(preds) if preds else np.zeros(0),
        unit=model.unit,
    )


def featurize_structures(model, structures: list[Structure], ids: list[str]) -> PackedGraphs:
    """Graphs of ``structures`` with the featurizer settings the model was trained with."""
    featurizer = Featurizer(model.featurizer_settings)
    return PackedGraphs.from_graphs([featurizer.featurize(s, i) for s, i in zip(structures, ids)], ids)


def embed_structures(model, structures: list[Structure], ids: list[str] | None = None) -> Embeddings:
    ids = ids if ids is not None else [str(i) for i in range(len(structures))]
    if hasattr(model, "embed_structures"):  # an advisor with its own graph construction (e.g. CHGNet)
        atom, crystal = model.embed_structures(structures)
        return Embeddings(np.asarray(ids, dtype=str), crystal, atom,
                          np.r_[0, np.cumsum([len(s) for s in structures])].astype(np.int64),
                          model.predict_structures(structures), model.unit)
    return run_advisor(model, featurize_structures(model, structures, ids))
