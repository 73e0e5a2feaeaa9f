"""A foundation-model advisor: CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)), a
universal interatomic potential pretrained on the Materials Project trajectory set, whose
weights ship inside its pip package (optional extra: ``pip install 'adex[chgnet]'``).

``adex advisor import chgnet`` copies the pretrained weights into the registry as
``advisor/chgnet:N`` (``model.json`` = CHGNet's own ``model_args``, weights as
safetensors, sha256-verified like every adex model), so an expert trained with it reloads
exactly the same network even if the installed CHGNet's default checkpoint changes.
As an advisor it embeds pymatgen structures with CHGNet's own graph construction:
per-atom features [n_atoms, 64] and a per-crystal feature [64] (CHGNet's readout input),
through :meth:`CHGNetAdvisor.embed_structures`.
"""
from __future__ import annotations

import contextlib
import json
import sys

import numpy as np
import torch
from torch import nn

from adex.errors import MissingExtraError

#: How the per-crystal embedding is formed from CHGNet's readout (a sum over atoms).
CRYSTAL_POOLINGS = ("sum", "mean")
RELAXATION_STEP_SIZES = (0.02, 0.04, 0.08, 0.16)  # Å²/eV: the line search of CHGNetAdvisor.relaxed_energies

INSTALL_HINT = "the CHGNet advisor needs the optional CHGNet package: pip install 'adex[chgnet]' (or pip install chgnet)"


#: Names that CHGNet's package ``__init__`` files import eagerly from heavy modules (ASE
#: molecular dynamics, pymatgen's VASP output parsers, hence scipy.signal and matplotlib:
#: ~2 s per process) although the network needs none of them: (package, module, names).
_CHGNET_EAGER_EXTRAS = (
    ("chgnet.model", "chgnet.model.dynamics", ("CHGNetCalculator", "MolecularDynamics", "StructOptimizer")),
    ("chgnet.utils", "chgnet.utils.vasp_utils", ("parse_vasp_dir", "solve_charge_by_mag")),
)


def _lazy_package(name: str, heavy_module: str, heavy_names: tuple[str, ...], eager_module: str | None = None):
    """The package ``name`` without running its ``__init__``: submodules import as usual,
    ``eager_module``'s public names are copied in, and ``heavy_names`` import
    ``heavy_module`` on first access (PEP 562 module ``__getattr__``), so
    ``from chgnet.model import StructOptimizer`` still works, just later."""
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(name)
    module = types.ModuleType(name)
    module.__spec__, module.__path__, module.__file__ = spec, list(spec.submodule_search_locations), spec.origin
    module.__package__ = name

    def __getattr__(attr: str):
        if attr in heavy_names:
            value = getattr(importlib.import_module(heavy_module), attr)
            setattr(module, attr, value)
            return value
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__getattr__ = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as the import system does for a loaded submodule
    if eager_module:
        source = importlib.import_module(eager_module)
        for attr in getattr(source, "__all__", [a for a in vars(source) if not a.startswith("_")]):
            setattr(module, attr, getattr(source, attr))
    return module


def _chgnet_class():
    """CHGNet's network class, imported without the molecular-dynamics and VASP-parsing
    modules its package ``__init__`` files pull in (see ``benchmarks/`` and the README:
    about 2 s less per process). Falls back to the plain import if CHGNet's layout differs."""
    try:
        import chgnet  # noqa: F401  (the top-level package itself is light)
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    if "chgnet.model" not in sys.modules:
        created = []
        try:
            for package, heavy_module, heavy_names in reversed(_CHGNET_EAGER_EXTRAS):  # chgnet.utils first
                if package not in sys.modules:
                    eager = "chgnet.utils.common_utils" if package == "chgnet.utils" else None
                    _lazy_package(package, heavy_module, heavy_names, eager_module=eager)
                    created.append(package)
            from chgnet.model.model import CHGNet

            sys.modules["chgnet.model"].CHGNet = CHGNet
            return CHGNet
        except Exception:  # an unexpected package layout: undo, then import as usual
            for package in created:
                sys.modules.pop(package, None)
                if hasattr(chgnet, package.rpartition(".")[2]):
                    delattr(chgnet, package.rpartition(".")[2])
    try:
        from chgnet.model import CHGNet
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return CHGNet


def require_chgnet() -> None:
    """MissingExtraError unless the CHGNet package is installed (without importing it:
    that takes over a second)."""
    from importlib.util import find_spec

    if find_spec("chgnet") is None:
        raise MissingExtraError(INSTALL_HINT)


def chgnet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chgnet")
    except PackageNotFoundError:
        raise MissingExtraError(INSTALL_HINT) from None


class CHGNetAdvisor(nn.Module):
    """A frozen CHGNet used as an advisor.

    ``embed_structures(structures)`` -> (atom float32 [sum n_atoms, 64], crystal float32 [B, 64]);
    the crystal features are CHGNet's readout, a *sum* over atoms (extensive: the same
    crystal written as a 2x2x2 supercell gets 8x the vector) unless ``crystal_pooling`` is
    ``"mean"`` (intensive: divided by the number of atoms), the default of new imports.
    ``predict_structures(structures)`` -> energy per atom (eV/atom) [B];
    ``total_energies(structures)`` -> energy (eV) [B]: as a universal potential it
    gives unrelaxed vacancy energies (:mod:`adex.expert.potential`).
    """

    unit = "eV/atom"

    def __init__(self, model_args: dict, model_name: str = "", package_version: str = "", crystal_pooling: str = "sum"):
        super().__init__()
        if crystal_pooling not in CRYSTAL_POOLINGS:
            raise ValueError(f"crystal_pooling must be one of {CRYSTAL_POOLINGS}, not {crystal_pooling!r}")
        self.crystal_pooling = crystal_pooling
        CHGNet = _chgnet_class()
        self.model_args = dict(model_args)
        self.model_name = model_name
        self.package_version = package_version
        with contextlib.redirect_stdout(sys.stderr):  # CHGNet prints a banner; stdout is for results (CSV, JSON)
            self.chgnet = CHGNet(**self.model_args)
        self.chgnet.eval()
        for p in self.chgnet.parameters():
            p.requires_grad_(False)

    @property
    def embedding_width(self) -> int:
        return int(self.model_args["atom_fea_dim"])

    @torch.no_grad()
    def _run(self, structures, batch_size: int = 16) -> list[dict]:
        if not structures:
            return []
        out = self.chgnet.predict_structure(list(structures), task="e", return_atom_feas=True, return_crystal_feas=True,
                                            batch_size=batch_size)
        return out if isinstance(out, list) else [out]

    def embed_structures(self, structures) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom [sum n, 64] and per-crystal [B, 64] CHGNet features (float32)."""
        results = self._run(structures)
        width = self.embedding_width
        atom = np.concatenate([r["atom_fea"] for r in results]) if results else np.zeros((0, width))
        crystal = np.stack([r["crystal_fea"] for r in results]) if results else np.zeros((0, width))
        if self.crystal_pooling == "mean" and results:
            crystal = crystal / np.array([len(r["atom_fea"]) for r in results], dtype=np.float64)[:, None]
        return atom.astype(np.float32), crystal.astype(np.float32)

    def predict_structures(self, structures) -> np.ndarray:
        """CHGNet energy per atom (eV/atom) [B]."""
        return np.array([float(r["e"]) for r in self._run(structures)])

    def total_energies(self, structures, batch_size: int = 16) -> np.ndarray:
        """CHGNet energy (eV) of each structure [B], float64 (per-atom energy x atoms)."""
        results = self._run(structures, batch_size)
        return np.array([float(r["e"]) * len(s) for r, s in zip(results, structures)], dtype=np.float64)

    def relaxed_energies(self, structures, step_sizes=RELAXATION_STEP_SIZES, max_displacement: float = 0.4,
                         batch_size: int = 16) -> np.ndarray:
        """CHGNet energy (eV) of each structure after one steepest-descent line search [B], float64.

        The forces F (eV/Å) [n, 3] at the given positions move every atom by ``a F`` for each
        step size ``a`` (Å²/eV) of ``step_sizes``, scaled down where an atom would move more
        than ``max_displacement`` (Å); the result is the lowest energy of the unmoved and
        the moved structures, so never above :meth:`total_energies`. A cheap estimate of the
        relaxation energy around a vacancy (a full relaxation takes ~100 such evaluations).
        """
        from pymatgen.core import Structure

        structures = list(structures)
        if not structures:
            return np.zeros(0, dtype=np.float64)
        out = []
        with contextlib.redirect_stdout(sys.stderr), torch.enable_grad():  # forces = -dE/dx by autograd
            for structure in structures:  # one at a time: a batch of 16 supercells of ~130 atoms peaks at ~20 GB
                out.append(self.chgnet.predict_structure(structure, task="ef", batch_size=1))
        best = np.array([float(r["e"]) * len(s) for r, s in zip(out, structures)], dtype=np.float64)
        moved, owner = [], []
        for b, (r, s) in enumerate(zip(out, structures)):
            forces = np.asarray(r["f"], dtype=np.float64)  # eV/Å [n, 3]
            largest = float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0
            if largest == 0.0:
                continue
            for a in step_sizes:
                scale = min(float(a), max_displacement / largest)
                moved.append(Structure(s.lattice, s.species, s.cart_coords + scale * forces, coords_are_cartesian=True))
                owner.append(b)
        for b, energy in zip(owner, self.total_energies(moved, batch_size)):
            best[b] = min(best[b], float(energy))
        return best

    def fire_relaxed_energies(self, structures, steps: int, max_step: float = 0.5, dt_start: float = 0.3) -> np.ndarray:
        """CHGNet energy (eV) of each structure after ``steps`` FIRE steps at fixed cell [B], float64.

        FIRE (Bitzek et al., PRL 97, 170201 (2006)) step for step as ASE's ``FIRE(atoms,
        dt=dt_start, maxstep=max_step)`` (time step at most 1.0; no step moves the atoms by
        more than ``max_step`` Å in total norm over all atoms), ``steps + 1`` force
        evaluations per structure; the result is the lowest energy met, so never above
        :meth:`total_energies`. Over the 1,481 Witman vacancies 10 steps lower the defected
        supercell's energy by 1.01 eV on average, :meth:`relaxed_energies` by 0.64 eV
        (``benchmarks/relaxation_energies.py``).
        """
        from pymatgen.core import Structure

        if steps < 1:
            raise ValueError(f"FIRE relaxation needs steps >= 1, got {steps}")
        structures = list(structures)
        out = np.zeros(len(structures), dtype=np.float64)
        with contextlib.redirect_stdout(sys.stderr), torch.enable_grad():  # forces = -dE/dx by autograd
            for b, structure in enumerate(structures):  # one at a time (memory; see relaxed_energies)
                positions = np.array(structure.cart_coords, dtype=np.float64)  # Å [n, 3]
                velocity = np.zeros_like(positions)
                dt, alpha, since_negative = dt_start, 0.1, 0
                best = np.inf
                for step in range(steps + 1):
                    moved = Structure(structure.lattice, structure.species, positions, coords_are_cartesian=True)
                    result = self.chgnet.predict_structure(moved, task="ef", batch_size=1)
                    best = min(best, float(result["e"]) * len(structure))
                    if step == steps:
                        break
                    forces = np.asarray(result["f"], dtype=np.float64)  # eV/Å [n, 3]
                    power = float(np.vdot(velocity, forces))
                    if step == 0:
                        pass  # at rest: no mixing, no time-step change (as ASE's first step)
                    elif power > 0.0:
                        force_norm = float(np.linalg.norm(forces)) or 1.0
                        velocity = (1.0 - alpha) * velocity + alpha * forces / force_norm * float(np.linalg.norm(velocity))
                        if since_negative > 5:
                            dt, alpha = min(dt * 1.1, 1.0), alpha * 0.99
                        since_negative += 1
                    else:
                        velocity[:] = 0.0
                        dt, alpha, since_negative = dt * 0.5, 0.1, 0
                    velocity += dt * forces
                    displacement = dt * velocity
                    norm = float(np.linalg.norm(displacement))
                    if norm > max_step:
                        displacement *= max_step / norm
                    positions = positions + displacement
                out[b] = best
        return out

    def architecture(self) -> dict:
        extra = {"crystal_pooling": self.crystal_pooling} if self.crystal_pooling != "sum" else {}  # old files: sum
        return {
            **extra,
            "class": "chgnet_advisor",
            "model_args": self.model_args,
            "model_name": self.model_name,
            "chgnet_package_version": self.package_version,
            "embedding_width": self.embedding_width,
            "target": "energy_per_atom",
            "unit": self.unit,
        }

    @staticmethod
    def check_requirements() -> None:
        """MissingExtraError unless the chgnet package is installed (checked before building)."""
        require_chgnet()

    @classmethod
    def from_architecture(cls, arch: dict) -> "CHGNetAdvisor":
        return cls(arch["model_args"], arch.get("model_name", ""), arch.get("chgnet_package_version", ""),
                   arch.get("crystal_pooling", "sum"))


def import_chgnet(registry, model_name: str = "0.3.0", name: str = "chgnet", aliases: tuple[str, ...] = (),
                  crystal_pooling: str = "mean"):
    """Register CHGNet's pretrained ``model_name`` as ``advisor/<name>``; returns the entry.

    ``crystal_pooling``: ``"mean"`` (default) makes the crystal embedding intensive (CHGNet's
    sum readout divided by the number of atoms); ``"sum"`` keeps CHGNet's extensive readout,
    as the shipped ``advisor/chgnet:1`` has it."""
    from adex.checkpoint import model_files

    CHGNet = _chgnet_class()
    package_version = chgnet_version()
    with contextlib.redirect_stdout(sys.stderr):
        pretrained = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
    args = pretrained.todict()["model_args"]
    advisor = CHGNetAdvisor(json.loads(json.dumps(args)), model_name, package_version, crystal_pooling)
    advisor.chgnet.load_state_dict(pretrained.state_dict(), strict=True)
    card = {
        "description": f"CHGNet {model_name} (pretrained universal potential, pip package chgnet {package_version}) "
                       "as an advisor: per-atom and per-crystal 64-d features",
        "source": {"package": "chgnet", "package_version": package_version, "model_name": model_name,
                   "reference": "B. Deng et al., Nat. Mach. Intell. 5, 1031 (2023)"},
        "embedding_width": advisor.embedding_width,
        "target": {"name": "energy_per_atom", "unit": "eV/atom"},
        "featurizer": {"name": "chgnet", "atom_graph_cutoff": args.get("atom_graph_cutoff"),
                       "bond_graph_cutoff": args.get("bond_graph_cutoff")},
        "crystal_pooling": crystal_pooling,
    }
    return registry.register("advisor", name, model_files(advisor), card, aliases=list(aliases))
