"""Import the original CGCNN pretrained checkpoints as adex advisors.

Source: ``pre-trained/*.pth.tar`` of https://github.com/txie-93/cgcnn (commit
f42ab233c4ee0c416879d6bc2d22a264418413ad), the models of T. Xie and J. C. Grossman,
Phys. Rev. Lett. 120, 145301 (2018). Each file is a legacy pickled ``torch.save`` dict
with ``state_dict``, ``normalizer`` ``{mean, std}``, ``args``, ``epoch``,
``best_mae_error`` and ``optimizer`` (ignored).

Usage::

    adex advisor import cgcnn formation-energy-per-atom.pth.tar --trust-pickle
    adex advisor import cgcnn --all DIR --trust-pickle
    adex advisor predict cgcnn-formation-energy some.cif

Safety
    Unpickling can run arbitrary code, so nothing is read unless the caller passes
    ``trust_pickle=True`` (``--trust-pickle``). Even then the file is first loaded with
    ``torch.load(weights_only=True)`` and a small allowlist (``argparse.Namespace``, numpy
    scalars and dtypes); full unpickling (``weights_only=False``) is only the fallback. All
    eight published files load without it. The imported model is stored as
    ``model.json`` + ``weights.safetensors`` (:func:`adex.checkpoint.model_files`), so later
    loads never unpickle anything.

Mapping (CGCNN name -> adex name; every CGCNN tensor is used exactly once and every
adex tensor is filled, then the state dict is loaded strictly):

* ``embedding.{weight,bias}`` -> ``backbone.embedding.embedding.{weight,bias}``. Its input
  width must be 92: CGCNN's ``atom_init.json``, which adex ships as the ``cgcnn92`` element
  table. The table itself (buffer ``backbone.embedding.table``) is not in CGCNN's state
  dict; it is taken from adex's table.
* ``convs.K.{fc_full,bn1,bn2}.*`` -> ``backbone.convs.K.{fc_full,bn1,bn2}.*`` (same layout:
  ``fc_full`` acts on ``[x_i, x_j, e_ij]`` in both). The old checkpoints have no
  ``bn*.num_batches_tracked`` (they predate it); adex's are left at 0.
* ``backbone.gaussian.centers`` is computed from the featurizer settings (0, 0.2, ... 8 Å;
  CGCNN uses ``exp(-(d - mu)^2 / step^2)``, the same basis).
* Head: CGCNN computes ``softplus(conv_to_fc(softplus(pooled)))``, then ``n_h - 1`` layers
  ``softplus(fcs.K(.))`` and ``fc_out``: note the softplus *before* ``conv_to_fc``, which
  adex's :class:`~adex.nn.MLPHead` applies with ``input_softplus=True``
  (``AdvisorModelConfig.head_input_softplus``). The head maps directly: ``head_hidden =
  h_fea_len``, ``head_layers = n_h``, ``conv_to_fc`` -> ``head.conv_to_fc``, ``fcs.K`` ->
  ``head.fcs.K``, ``fc_out`` -> ``head.fc_out``. For the published models (F=64, h=32,
  n_h=1) the adex head is ``head_hidden=32, head_layers=1``. The crystal embedding (the
  pooled features the expert reads) is CGCNN's own pooled vector, before the softplus.
* ``normalizer`` -> ``normalizer.{mean,std}`` buffers.

Featurizer: ``cutoff`` = ``args.radius`` (default 8 Å), ``max_neighbors`` =
``args.max_num_nbr`` (12), ``gaussian_step`` = ``gaussian_width`` = ``args.step`` (0.2 Å),
``element_embedding="cgcnn92"`` and ``tie_tolerance=-1`` (see below). Shapes are read from
the state dict; where ``args`` say otherwise the state dict wins (recorded in the card).

Neighbours: CGCNN vs adex

* CGCNN keeps exactly ``max_num_nbr`` = 12 neighbours per atom, sorted by distance, ties
  at the 12th broken in pymatgen's neighbour order; adex by default keeps every neighbour
  tied (within ``tie_tolerance``) with the 12th, so symmetry-equivalent atoms get identical
  neighbourhoods. The CGCNN weights were trained on sums over exactly 12 messages: with
  ties kept (e.g. 14 neighbours in bcc, 18 in rock salt) the imported formation-energy
  model is off by 3.4 eV/atom on average (up to 37 eV/atom) on the first 200 structures
  of the shipped Materials Project set, against 0.07 eV/atom with truncation. Imported
  advisors therefore use ``tie_tolerance=-1``: no neighbour counts as a tie, exactly the
  12 nearest are kept, as in CGCNN. Among equidistant neighbours the choice may differ
  from CGCNN's; for symmetry-equivalent neighbours (same element, same distance) it
  cannot change the result.
* CGCNN pads atoms that have fewer than 12 neighbours within 8 Å with fake neighbours
  (atom 0 at ``radius + 1`` = 9 Å, whose Gaussian features are ~0 but which still send a
  message built from atom 0's features). adex keeps only the real neighbours, so for such
  atoms (rare: open or molecular structures) predictions differ from CGCNN's. This is not
  emulated.

Otherwise predictions equal CGCNN's to float rounding (``tests/test_cgcnn_import.py``
compares against a dense reimplementation of CGCNN's forward pass).

Classification checkpoints (``semi-metal-classification``: two log-softmax outputs) are
not regression models and are refused (skipped by ``--all``).
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from adex.errors import RegistryError
from adex.fileio import sha256_file

ORIGIN = {
    "repository": "https://github.com/txie-93/cgcnn",
    "commit": "f42ab233c4ee0c416879d6bc2d22a264418413ad",
    "folder": "pre-trained/",
}
REFERENCE = "T. Xie and J. C. Grossman, Phys. Rev. Lett. 120, 145301 (2018)"
NOTE = "imported, not trained by adex"
#: width of CGCNN's element features (atom_init.json), adex's ``cgcnn92`` table.
CGCNN_INPUT_WIDTH = 92
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")
#: FeaturizerSettings.tie_tolerance of imported models: keep exactly max_neighbors, as CGCNN.
NO_TIES = -1.0


@dataclass(frozen=True)
class CGCNNTarget:
    """What a published checkpoint predicts. ``published_test_mae`` in ``unit`` (or None)."""

    name: str
    unit: str
    description: str
    published_test_mae: float | None = None


#: keyed by the checkpoint file name without ``.pth.tar``.
TARGETS: dict[str, CGCNNTarget] = {
    "formation-energy-per-atom": CGCNNTarget("formation_energy_per_atom", "eV/atom", "formation energy per atom", 0.039),
    "band-gap": CGCNNTarget("band_gap", "eV", "band gap (PBE)", 0.388),
    "final-energy-per-atom": CGCNNTarget("final_energy_per_atom", "eV/atom", "absolute (final DFT) energy per atom"),
    "efermi": CGCNNTarget("efermi", "eV", "Fermi energy"),
    "bulk-moduli": CGCNNTarget("bulk_modulus", "log10(GPa)", "bulk modulus (VRH), log10 of GPa"),
    "shear-moduli": CGCNNTarget("shear_modulus", "log10(GPa)", "shear modulus (VRH), log10 of GPa"),
    "poisson-ratio": CGCNNTarget("poisson_ratio", "1", "Poisson ratio (unitless)"),
}


class NotRegressionError(RegistryError):
    """The checkpoint is a classifier (e.g. semi-metal-classification), not a regression model."""


# --------------------------------------------------------------------------- names


def checkpoint_stem(path: str | os.PathLike) -> str:
    """``.../formation-energy-per-atom.pth.tar`` -> ``formation-energy-per-atom``."""
    name = Path(path).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def default_name(path: str | os.PathLike) -> str:
    """Registry name for a checkpoint: ``cgcnn-`` + file stem without ``-per-atom``
    (``formation-energy-per-atom.pth.tar`` -> ``cgcnn-formation-energy``)."""
    stem = checkpoint_stem(path)
    stem = re.sub(r"-per-atom$", "", stem)
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "-", stem).strip("-_.+") or "model"
    return f"cgcnn-{stem}"


# --------------------------------------------------------------------------- loading


def _safe_globals() -> list:
    """Classes the restricted unpickler may build: argparse.Namespace (``args`` in some
    CGCNN versions) and numpy scalars/dtypes (``best_mae_error`` of the classifier)."""
    import numpy as np

    allowed: list = [argparse.Namespace, np.dtype]
    allowed += [type(np.dtype(code)) for code in ("float64", "float32", "int64", "int32", "bool")]
    try:
        scalar = np._core.multiarray.scalar  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        scalar = np.core.multiarray.scalar
    allowed += [scalar, (scalar, "numpy.core.multiarray.scalar")]  # pickled by numpy 1.x under that name
    return allowed


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[dict, str]:
    """Read a CGCNN ``.pth.tar``: ``(checkpoint dict, loader used)``.

    Raises:
        RegistryError: without ``trust_pickle``; unreadable file; not a CGCNN checkpoint.
    """
    path = Path(path)
    if not trust_pickle:
        raise RegistryError(
            f"{path} is a pickled checkpoint; loading it can run code; pass --trust-pickle if you trust its source"
        )
    if not path.is_file():
        raise RegistryError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        loader = "torch.load(weights_only=True)"
    except pickle.UnpicklingError:
        # needs classes outside the allowlist: full unpickling, which the caller trusts
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RegistryError(f"{path}: cannot load as a torch checkpoint ({type(exc).__name__}: {exc})") from None
        loader = "torch.load(weights_only=False) (trusted pickle)"
    except Exception as exc:
        raise RegistryError(f"{path}: cannot load as a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise RegistryError(f"{path}: not a CGCNN checkpoint (expected a dict with a 'state_dict')")
    return checkpoint, loader


def _plain(value):
    """JSON-safe copy of ``value`` (Namespace -> dict, numpy scalars -> numbers)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def checkpoint_args(checkpoint: dict) -> dict:
    """The checkpoint's ``args`` as a plain dict ({} if absent)."""
    args = checkpoint.get("args")
    return _plain(args) if isinstance(args, (dict, argparse.Namespace)) else {}


def is_classification(checkpoint: dict) -> bool:
    """True for classifier checkpoints (``args.task`` or a 2-wide ``fc_out``)."""
    args = checkpoint_args(checkpoint)
    fc_out = checkpoint["state_dict"].get("fc_out.weight")
    return args.get("task") == "classification" or (fc_out is not None and fc_out.shape[0] != 1)


# --------------------------------------------------------------------------- mapping


@dataclass
class CGCNNArchitecture:
    """Shapes read from a CGCNN state dict."""

    orig_atom_fea_len: int
    nbr_fea_len: int
    atom_fea_len: int
    n_conv: int
    h_fea_len: int
    n_h: int
    n_out: int


def read_architecture(state: dict, source: str = "checkpoint") -> CGCNNArchitecture:
    """Architecture from tensor shapes (not from ``args``); checks internal consistency."""

    def tensor(key: str) -> torch.Tensor:
        if key not in state:
            raise RegistryError(f"{source}: not a CGCNN state dict (no {key!r})")
        return state[key]

    emb = tensor("embedding.weight")
    width, orig = emb.shape
    n_conv = 0
    while f"convs.{n_conv}.fc_full.weight" in state:
        n_conv += 1
    if n_conv == 0:
        raise RegistryError(f"{source}: no convolution layers (convs.0.fc_full.weight)")
    fc_full = tensor("convs.0.fc_full.weight")
    if fc_full.shape[0] != 2 * width or fc_full.shape[1] <= 2 * width:
        raise RegistryError(f"{source}: convs.0.fc_full.weight has shape {tuple(fc_full.shape)}, "
                            f"expected [2*{width}, 2*{width} + n_gaussians]")
    h = tensor("conv_to_fc.weight").shape[0]
    n_fcs = 0
    while f"fcs.{n_fcs}.weight" in state:
        n_fcs += 1
    return CGCNNArchitecture(
        orig_atom_fea_len=int(orig), nbr_fea_len=int(fc_full.shape[1] - 2 * width), atom_fea_len=int(width),
        n_conv=n_conv, h_fea_len=int(h), n_h=1 + n_fcs, n_out=int(tensor("fc_out.weight").shape[0]),
    )


def featurizer_settings(args: dict, arch: CGCNNArchitecture, source: str = "checkpoint"):
    """adex FeaturizerSettings reproducing CGCNN's graph (see module docstring)."""
    from adex.graphs import FeaturizerSettings

    if float(args.get("dmin", 0.0) or 0.0) != 0.0:
        raise RegistryError(f"{source}: Gaussian centres start at dmin={args['dmin']}; adex's start at 0")
    step = float(args.get("step", 0.2))
    settings = FeaturizerSettings(
        cutoff=float(args.get("radius", 8.0)),
        max_neighbors=int(args.get("max_num_nbr", 12)),
        gaussian_step=step,
        gaussian_width=step,
        element_embedding="cgcnn92",
        tie_tolerance=NO_TIES,
    )
    if settings.n_gaussians != arch.nbr_fea_len:
        raise RegistryError(
            f"{source}: the convolutions expect {arch.nbr_fea_len} edge features, but cutoff "
            f"{settings.cutoff} Å / step {step} Å gives {settings.n_gaussians} Gaussians"
        )
    return settings


def model_config(arch: CGCNNArchitecture):
    """AdvisorModelConfig holding CGCNN's network (softplus before the head, see docstring)."""
    from adex.advisors.model import AdvisorModelConfig

    return AdvisorModelConfig(
        atom_fea_len=arch.atom_fea_len,
        n_conv=arch.n_conv,
        pooling="mean",
        head_hidden=arch.h_fea_len,
        head_layers=arch.n_h,
        dropout=0.0,
        head_input_softplus=True,
    )


_CONV_PARAMS = ("fc_full.weight", "fc_full.bias") + tuple(
    f"{bn}.{p}" for bn in ("bn1", "bn2") for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
)


def convert_state_dict(state: dict, model, arch: CGCNNArchitecture, source: str = "checkpoint") -> tuple[dict, dict]:
    """adex state dict for ``model`` (an Advisor built with :func:`model_config`) from a
    CGCNN state dict: ``(adex state, {cgcnn key: adex key})``.

    Raises RegistryError if a CGCNN tensor is unused, an adex tensor unfilled or a shape differs.
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}

    def put(cgcnn_key: str, adex_key: str, value: torch.Tensor) -> None:
        if adex_key not in target:
            raise RegistryError(f"{source}: internal mapping error: adex has no parameter {adex_key!r}")
        if adex_key in out:
            raise RegistryError(f"{source}: internal mapping error: {adex_key!r} filled twice")
        if tuple(value.shape) != tuple(target[adex_key].shape):
            raise RegistryError(f"{source}: {cgcnn_key} has shape {tuple(value.shape)}; "
                                f"{adex_key} needs {tuple(target[adex_key].shape)}")
        out[adex_key] = value.to(target[adex_key].dtype).clone()
        mapping[cgcnn_key] = adex_key

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise RegistryError(f"{source}: state_dict[{key!r}] is not a tensor")
        if key in ("embedding.weight", "embedding.bias"):
            put(key, f"backbone.embedding.{key}", value)
        elif (m := re.fullmatch(r"convs\.(\d+)\.(.+)", key)) and m.group(2) in _CONV_PARAMS:
            put(key, f"backbone.{key}", value)
        elif re.fullmatch(r"(conv_to_fc|fcs\.\d+|fc_out)\.(weight|bias)", key):
            put(key, f"head.{key}", value)
        else:
            raise RegistryError(f"{source}: unexpected tensor {key!r} in the CGCNN state dict (not imported)")

    # adex tensors CGCNN does not store
    for key in ("backbone.embedding.table", "backbone.gaussian.centers"):
        out[key] = target[key].clone()  # adex's cgcnn92 table; Gaussian centres of the featurizer
    for key in target:
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(target) - set(out) - {"normalizer.mean", "normalizer.std"})
    if missing:
        raise RegistryError(f"{source}: adex parameters not filled by the checkpoint: {', '.join(missing)}")
    return out, mapping


def build_advisor(checkpoint: dict, target: str, unit: str, source: str = "checkpoint"):
    """An adex Advisor (eval mode) holding the checkpoint's weights: ``(advisor, info)``.

    ``info`` has ``arch`` (CGCNNArchitecture), ``args`` (plain dict), ``mapping`` and
    ``args_disagreements``.
    """
    from adex.advisors.model import Advisor

    if is_classification(checkpoint):
        raise NotRegressionError(
            f"{source} is a classification checkpoint (task 'classification', "
            f"{checkpoint['state_dict']['fc_out.weight'].shape[0]} log-softmax outputs); "
            "adex advisors are regression models, so it is not imported"
        )
    state = checkpoint["state_dict"]
    arch = read_architecture(state, source)
    if arch.orig_atom_fea_len != CGCNN_INPUT_WIDTH:
        raise RegistryError(
            f"{source}: embedding input width {arch.orig_atom_fea_len}, expected {CGCNN_INPUT_WIDTH} "
            "(CGCNN's atom_init.json, adex's 'cgcnn92' table)"
        )
    args = checkpoint_args(checkpoint)
    disagreements = {
        key: {"args": args[key], "state_dict": getattr(arch, key)}
        for key in ("atom_fea_len", "n_conv", "h_fea_len", "n_h")
        if key in args and args[key] != getattr(arch, key)
    }
    featurizer = featurizer_settings(args, arch, source)
    normalizer = checkpoint.get("normalizer") or {}
    try:
        mean, std = float(normalizer["mean"]), float(normalizer["std"])
    except (KeyError, TypeError, ValueError):
        raise RegistryError(f"{source}: no usable normalizer {{mean, std}} in the checkpoint") from None
    if not std > 0:
        raise RegistryError(f"{source}: normalizer std is {std}; expected > 0")
    model = Advisor(featurizer, model_config(arch), target, unit, mean, std)
    table = model.state_dict()["backbone.embedding.table"]
    assert table.shape[1] == CGCNN_INPUT_WIDTH, "adex's cgcnn92 table is not 92 wide"
    adex_state, mapping = convert_state_dict(state, model, arch, source)
    adex_state["normalizer.mean"] = torch.tensor(mean, dtype=torch.float32)
    adex_state["normalizer.std"] = torch.tensor(std, dtype=torch.float32)
    model.load_state_dict(adex_state, strict=True)
    model.eval()
    return model, {"arch": arch, "args": args, "mapping": mapping, "args_disagreements": disagreements}


# --------------------------------------------------------------------------- import


@dataclass
class PreparedImport:
    """Everything :meth:`Registry.register` needs for one checkpoint (nothing written yet)."""

    path: Path
    name: str
    model: object  # the Advisor, eval mode
    card: dict
    primary_metric: tuple[str, float] | None


def prepare_import(
    path: str | os.PathLike,
    name: str | None = None,
    trust_pickle: bool = False,
    *,
    target: str | None = None,
    unit: str | None = None,
) -> PreparedImport:
    """Load, check and convert one checkpoint without registering it (see :func:`import_cgcnn`)."""
    from adex.config import to_dict
    from adex.graphs import element_table_sha256
    from adex.registry.refs import check_token

    path = Path(path)
    name = check_token(name or default_name(path), "name")
    checkpoint, loader = load_checkpoint(path, trust_pickle)
    if is_classification(checkpoint):
        raise NotRegressionError(
            f"{path} is a classification checkpoint (task 'classification', "
            f"{checkpoint['state_dict']['fc_out.weight'].shape[0]} log-softmax outputs); "
            "adex advisors are regression models, so it is not imported"
        )
    stem = checkpoint_stem(path)
    known = TARGETS.get(stem)
    if known is None and not (target and unit):
        raise RegistryError(
            f"{path}: unknown CGCNN checkpoint {stem!r} (known: {', '.join(TARGETS)}); "
            "give its target name and unit"
        )
    overridden = target is not None or unit is not None
    target_name = target or known.name
    target_unit = unit or known.unit
    model, info = build_advisor(checkpoint, target_name, target_unit, str(path))
    published_mae = known.published_test_mae if known and not overridden else None
    arch: CGCNNArchitecture = info["arch"]
    featurizer = model.featurizer_settings
    card = {
        "description": f"CGCNN pretrained {stem} model ({REFERENCE}) imported as an advisor: "
                       f"{target_name} ({target_unit})",
        "note": NOTE,
        "source": {
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "origin": dict(ORIGIN),
            "reference": REFERENCE,
            "loaded_with": loader,
        },
        "published": {
            "test_mae": published_mae,
            "unit": target_unit,
            "source": REFERENCE if published_mae is not None else None,
        },
        "featurizer": featurizer.to_dict(),
        "featurizer_fingerprint": featurizer.fingerprint(),
        "element_embedding": {"name": featurizer.element_embedding,
                              "sha256": element_table_sha256(featurizer.element_embedding)},
        "target": {"name": target_name, "unit": target_unit, "normalizer": model.normalizer.to_dict(),
                   "description": known.description if known and not overridden else None},
        "embedding_width": model.embedding_width,
        "config": {"model": to_dict(model.config), "featurizer": featurizer.to_dict()},
        "cgcnn": {
            "args": info["args"],
            "architecture": to_dict(arch),
            "args_disagreements": info["args_disagreements"],
            "epoch": _plain(checkpoint.get("epoch")),
            "best_val_mae": _plain(checkpoint.get("best_mae_error")),
            "normalizer": _plain(checkpoint.get("normalizer")),
            "ignored": sorted(str(k) for k in checkpoint
                              if k not in ("state_dict", "normalizer", "args", "epoch", "best_mae_error")),
            "parameter_map": info["mapping"],
            "head": "CGCNN's softplus before conv_to_fc is head_input_softplus=True; CGCNN conv_to_fc -> "
                    "head.conv_to_fc, fcs.K -> head.fcs.K, fc_out -> head.fc_out (head_hidden=h_fea_len, "
                    "head_layers=n_h)",
            "neighbours": "featurizer tie_tolerance=-1 keeps exactly the 12 nearest neighbours, as CGCNN "
                          "(adex's default keeps ties, which these weights were not trained for); CGCNN pads "
                          "atoms with < 12 neighbours within 8 A with fake neighbours, adex does not, so "
                          "predictions differ for such atoms",
        },
    }
    metric = ("published_test_mae", published_mae) if published_mae is not None else None
    return PreparedImport(path, name, model, card, metric)


def _register(prepared: PreparedImport, registry, aliases: tuple[str, ...] = ()):
    from adex.checkpoint import model_files

    return registry.register("advisor", prepared.name, model_files(prepared.model), prepared.card,
                             primary_metric=prepared.primary_metric, aliases=list(aliases))


def import_cgcnn(
    path: str | os.PathLike,
    name: str | None = None,
    registry=None,
    trust_pickle: bool = False,
    *,
    target: str | None = None,
    unit: str | None = None,
    aliases: tuple[str, ...] = (),
):
    """Import one CGCNN ``.pth.tar`` as registry entry ``advisor/<name>`` and return the Entry.

    Args:
        path: the checkpoint.
        name: registry name (default :func:`default_name`, e.g. ``cgcnn-formation-energy``).
        registry: a :class:`adex.registry.Registry` (default: the user's).
        trust_pickle: required: the file is a pickle, and unpickling can run code.
        target, unit: override the property name/unit (required for files not in :data:`TARGETS`).
        aliases: extra registry aliases for the new version.

    Raises:
        RegistryError: not trusted, unreadable, not a CGCNN regression checkpoint
            (:class:`NotRegressionError` for classifiers), unknown target.
    """
    from adex.registry import open_registry

    prepared = prepare_import(path, name, trust_pickle, target=target, unit=unit)
    return _register(prepared, registry or open_registry(), aliases)


@dataclass
class ImportResult:
    path: Path
    entry: object | None  # registry Entry, or None if skipped
    skipped: str | None = None  # reason


def find_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """``*.pth.tar`` files in ``directory`` (sorted)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RegistryError(f"{directory}: not a directory")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(".pth.tar"))


def import_cgcnn_dir(directory: str | os.PathLike, registry=None, trust_pickle: bool = False) -> list[ImportResult]:
    """Import every regression checkpoint in ``directory``; classifiers are skipped.

    All files are loaded and checked first, so an unusable one registers nothing.
    """
    from adex.registry import open_registry

    if not trust_pickle:
        raise RegistryError(
            f"{directory} holds pickled checkpoints; loading them can run code; "
            "pass --trust-pickle if you trust their source"
        )
    paths = find_checkpoints(directory)
    if not paths:
        raise RegistryError(f"{directory}: no *.pth.tar checkpoints")
    prepared: list[PreparedImport | ImportResult] = []
    for path in paths:  # check every file before registering any
        try:
            prepared.append(prepare_import(path, trust_pickle=True))
        except NotRegressionError as exc:
            prepared.append(ImportResult(path, None, str(exc)))
    registry = registry or open_registry()
    return [item if isinstance(item, ImportResult) else ImportResult(item.path, _register(item, registry))
            for item in prepared]
