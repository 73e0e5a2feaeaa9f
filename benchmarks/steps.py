"""In-process measurements of the benchmark suite, one per fresh process.

``benchmarks/run_all.py`` runs ``python benchmarks/steps.py STEP [options] --result FILE``
in a new process for each measurement (so imports, caches and memory are isolated) and
adds the process's wall time, CPU time and peak RSS. This file only measures what happens
inside the process (time of each stage, counts, graph sizes) and writes it as JSON.

Every time is in seconds (``*_s``) or milliseconds (``*_ms``); CPU times are this
process's ``time.process_time()`` (user + system).
"""
from __future__ import annotations

import time

_T_START = time.perf_counter()
_C_START = time.process_time()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


class Timer:
    """Accumulates wall and CPU seconds per stage name."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, float] = {}  # the process's peak RSS (MB) at the end of the stage's last run

    @contextmanager
    def __call__(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.rss[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def as_dict(self, n: int | None = None) -> dict:
        out = {"stage_wall_s": {k: round(v, 4) for k, v in self.wall.items()},
               "stage_cpu_s": {k: round(v, 4) for k, v in self.cpu.items()},
               "peak_rss_MB_after_stage": dict(self.rss)}
        if n:
            out["stage_wall_ms_per_item"] = {k: round(1000 * v / n, 3) for k, v in self.wall.items()}
        return out


def _torch_threads(threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    return torch.get_num_threads()


def _witman_rows(data: str) -> list[dict]:
    with open(Path(data) / "witman2023_vacancies" / "vacancies.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _expert_config():
    from adex.config import load_config
    from adex.expert.train import ExpertConfig

    return load_config(ExpertConfig, "expert", "default")


def _spread(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows spread evenly over the table (deterministic)."""
    if n >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, n).round().astype(int)]


# --------------------------------------------------------------------------- featurization


def step_mp(args) -> dict:
    """Pristine graphs of an MP subset through ``adex.datasets.load_dataset`` (cold or cached)."""
    from adex.advisors.model import AdvisorConfig
    from adex.config import load_config
    from adex.datasets import dataset_root, fingerprint_files, load_dataset
    from adex.paths import cache_dir

    config = load_config(AdvisorConfig, "advisors", "eform")
    before = set((cache_dir() / "graphs").glob("*.npz")) if (cache_dir() / "graphs").is_dir() else set()
    t = Timer()
    with t("fingerprint_inputs"):  # paid by every call, cached or not
        fingerprint_files([dataset_root("mp_formation_energy", args.data) / "structures.tar.gz"])
    with t("load_dataset"):
        ds = load_dataset("mp_formation_energy", config.featurizer, data=args.data, limit=args.n, seed=0,
                          workers=args.workers)
    n = len(ds.graphs)
    return {"n_requested": args.n, "n_structures": n, "n_skipped": len(ds.skipped), "workers": args.workers,
            "cache_hit": bool(before) and ds.cache_path in before, "featurizer": config.featurizer.to_dict(),
            "seconds": round(t.wall["load_dataset"], 3), "cpu_seconds": round(t.cpu["load_dataset"], 3),
            "structures_per_s": round(n / t.wall["load_dataset"], 2),
            "mean_atoms": float(np.diff(ds.graphs.node_ptr).mean()), **t.as_dict()}


def step_witman_pristine(args) -> dict:
    """Pristine graphs of the Witman host CIFs: CIF parsing (ASE) and neighbour search
    (``adex.graphs.Featurizer``) timed separately, at the expert's cutoff (5 Å) and at the
    reference's (4.5 Å). adex caches no such graphs (the expert uses supercell graphs)."""
    from adex.graphs import Featurizer, FeaturizerSettings
    from adex.io import read_structure

    rows = _witman_rows(args.data)[: args.n]
    root = Path(args.data) / "witman2023_vacancies" / "structures"
    cutoffs = (5.0, 4.5)
    featurizers = {c: Featurizer(FeaturizerSettings(cutoff=c, max_neighbors=12)) for c in cutoffs}
    t = Timer()
    atoms, edges = [], {c: 0 for c in cutoffs}
    for row in rows:
        with t("cif_parse"):
            s = read_structure(root / f"{row['id']}.cif")
        atoms.append(len(s))
        for c, f in featurizers.items():
            with t(f"graph_{c:g}A"):
                edges[c] += f.featurize(s, row["id"]).n_edges
    n = len(rows)
    out = {"n_structures": n, "mean_atoms": float(np.mean(atoms)), "mean_edges": {f"{c:g}A": edges[c] / n for c in cutoffs}}
    for c in cutoffs:
        wall = t.wall["cif_parse"] + t.wall[f"graph_{c:g}A"]
        out[f"parse_plus_graph_{c:g}A"] = {"seconds": round(wall, 3), "structures_per_s": round(n / wall, 2),
                                           "ms_per_structure": round(1000 * wall / n, 3),
                                           "cif_parse_share": round(t.wall["cif_parse"] / wall, 3)}
    return {**out, **t.as_dict(n)}


def step_witman_vacancies(args) -> dict:
    """Supercell vacancy graphs (pristine + defected) through ``load_witman`` (cold or cached)."""
    from adex.expert.witman import load_witman
    from adex.paths import cache_dir
    from adex.supercell import SupercellSettings

    config = _expert_config()
    featurizer = config.featurizer
    if args.cutoff:
        import dataclasses

        featurizer = dataclasses.replace(featurizer, cutoff=args.cutoff)
    supercell = SupercellSettings(min_image_distance=args.min_image or config.supercell.min_image_distance,
                                  symprec=config.supercell.symprec)
    folder = cache_dir() / "vacancies"
    before = set(folder.glob("*.npz")) if folder.is_dir() else set()
    t = Timer()
    with t("load_witman"):
        packed = load_witman(featurizer, supercell, args.data, limit=args.n, workers=args.workers)
    n = len(packed)
    nodes = np.diff(packed.graphs.node_ptr)
    after = set(folder.glob("*.npz")) if folder.is_dir() else set()
    return {"n_vacancies": n, "workers": args.workers, "cache_hit": bool(before) and after == before,
            "featurizer": featurizer.to_dict(), "supercell": supercell.to_dict(),
            "seconds": round(t.wall["load_witman"], 3), "cpu_seconds_parent": round(t.cpu["load_witman"], 3),
            "vacancies_per_s": round(n / t.wall["load_witman"], 2),
            "ms_per_vacancy": round(1000 * t.wall["load_witman"] / n, 3),
            "mean_nodes": float(nodes.mean()), "max_nodes": int(nodes.max()),
            "mean_edges": float(np.diff(packed.graphs.edge_ptr).mean())}


# --------------------------------------------------------------------------- prediction


def _load_builtin_expert(t: Timer):
    from adex.expert.loading import DEFAULT_EXPERT, load_expert
    from adex.registry import open_registry

    with t("load_expert"):
        return load_expert(DEFAULT_EXPERT, open_registry())


def _expert_name(expert) -> str:
    """Exact reference of the expert and its number of members (1: a single expert)."""
    from adex.expert.ensemble import as_members

    ref = expert.entry.ref if expert.entry is not None else "untrained"
    return f"{ref} ({len(as_members(expert.model))} member(s))"


def _advisor_features_timed(expert, packed, t: Timer) -> list:
    """``compute_advisor_features`` (once per distinct primitive host, as the CLI does) split
    into graphs of the primitive hosts and the network."""
    from adex.advisors.embed import run_advisor
    from adex.expert.advisor_features import distinct_hosts, per_vacancy_features
    from adex.graphs import Featurizer, PackedGraphs

    features = []
    with t("advisor_primitive_graphs"):
        structures, ids, inverse = distinct_hosts(packed)
    for entry, model in expert.advisors:
        if hasattr(model, "embed_structures"):  # e.g. CHGNet: its own graphs, counted with the network
            with t("advisor_networks"):
                atom, crystal = model.embed_structures(structures)
        else:
            featurizer = Featurizer(model.featurizer_settings)
            with t("advisor_primitive_graphs"):
                graphs = PackedGraphs.from_graphs([featurizer.featurize(s, i) for s, i in zip(structures, ids)], ids)
            with t("advisor_networks"):
                emb = run_advisor(model, graphs)
            atom, crystal = emb.atom, emb.crystal
        features.append(per_vacancy_features(entry.ref, atom, crystal, [len(s) for s in structures], inverse))
    return features


def _model_only(expert, packed, features, t: Timer, name: str, batch_size: int = 256, prepare: bool = True) -> np.ndarray:
    """Prune (``model.prepare``), batch and run the expert: the model-only time."""
    import torch

    from adex.expert.data import VacancyDataset
    from adex.expert.ensemble import as_members

    members = as_members(expert.model)
    with torch.no_grad():
        with t(f"{name}_prepare"):
            used = expert.model.prepare(packed) if prepare else packed
            dataset = VacancyDataset(used, features)
        out = []
        with t(f"{name}_batches_and_forward"):
            for start in range(0, len(dataset), batch_size):
                batch = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
                out.append(np.mean([m.predict(batch).double().numpy() for m in members], axis=0))
    return np.concatenate(out)


REFERENCE_SIZE = ["advisors=[]", "model.atom_fea_len=8", "featurizer.cutoff=4.5", "model.oxidation_states=false"]


def _reference_size_expert(t: Timer):
    """An (untrained) expert of the reference's size: 4.5 Å, 12 neighbours, 2 convolutions
    of width 8, no advisors, no oxidation states; the time of a forward pass does not
    depend on the weights."""
    from types import SimpleNamespace

    from adex.config import load_config
    from adex.expert.model import Expert
    from adex.expert.train import ExpertConfig

    with t("load_expert"):
        config = load_config(ExpertConfig, "expert", "default", REFERENCE_SIZE)
        model = Expert(config.featurizer, config.model, [], 0.0, 1.0, config.supercell.to_dict()).eval()
    return SimpleNamespace(model=model, advisors=[], entry=None)


def step_model_only(args) -> dict:
    """Packed graphs from the cache and advisor features computed once; then the expert
    alone (prune + batch + forward), i.e. ``predict_packed`` without featurization."""
    from adex.expert.witman import load_witman
    from adex.expert.predict import predict_packed
    from adex.supercell import SupercellSettings

    threads = _torch_threads(args.threads)
    t = Timer()
    expert = _reference_size_expert(t) if args.reference_size else _load_builtin_expert(t)
    model = expert.model
    settings = SupercellSettings.from_dict(model.supercell)
    with t("load_cached_graphs"):
        packed = load_witman(model.featurizer_settings, settings, args.data, limit=args.n)
    if args.replicate and args.replicate != len(packed):  # N vacancies by replicating the cached ones
        idx = np.arange(args.replicate) % len(packed)
        base = packed
        features_base = _advisor_features_timed(expert, base, t)
        with t("replicate"):
            packed = base.subset(idx)
            features = [f.subset(base, idx) for f in features_base]
    else:
        features = _advisor_features_timed(expert, packed, t)
    n = len(packed)
    passes = []
    for _ in range(args.repeat):  # repeats: the first pass pays one-off allocations; the fastest is reported
        tm = Timer()
        pred = _model_only(expert, packed, features, tm, "model", batch_size=args.batch_size)
        passes.append((sum(tm.wall.values()), sum(tm.cpu.values())))
    model_s, model_cpu = min(passes)
    t.wall["model_best_pass"], t.cpu["model_best_pass"] = model_s, model_cpu
    out = {"n_vacancies": n, "torch_threads": threads, "repeat": args.repeat, "batch_size": args.batch_size,
           "expert": "reference size, untrained: " + ", ".join(REFERENCE_SIZE) if args.reference_size
           else _expert_name(expert),
           "model_passes_wall_cpu_s": [[round(w, 3), round(c, 3)] for w, c in passes],
           "model_seconds": round(model_s, 4), "model_cpu_seconds": round(model_cpu, 4),
           "model_vacancies_per_s": round(n / model_s, 1),
           "mean_nodes_full": float(np.diff(packed.graphs.node_ptr).mean()),
           "mean_nodes_pruned": float(np.diff(model.prepare(packed).graphs.node_ptr).mean())}
    if not args.replicate and not args.reference_size:
        with t("predict_packed"):  # the library call: advisors + model
            ref = predict_packed(expert, packed, batch_size=args.batch_size)
        out["predict_packed_seconds"] = round(t.wall["predict_packed"], 3)
        out["predict_packed_vacancies_per_s"] = round(n / t.wall["predict_packed"], 1)
        out["max_abs_diff_vs_predict_packed_eV"] = float(np.abs(ref - pred).max())
        if packed.targets is not None:
            out["mae_vs_dft_eV"] = round(float(np.abs(pred - packed.targets).mean()), 4)
    return {**out, **t.as_dict(n)}


def step_profile(args) -> dict:
    """Where ``adex predict --input`` spends its time, stage by stage, on ``n`` Witman
    vacancies: the same library calls in the same order as the CLI (one host file per
    vacancy, oxidation-state memo shared as in one CLI process)."""
    from adex.expert.data import PackedVacancies, pack_vacancy
    from adex.graphs import Featurizer
    from adex.io import read_structure
    from adex.oxidation import guess_oxidation_states
    from adex.supercell import SupercellSettings, build_vacancy, build_vacancy_graph, canonical_host

    t_import = time.perf_counter() - _T_START
    threads = _torch_threads(args.threads)
    t = Timer()
    expert = _load_builtin_expert(t)
    model = expert.model
    featurizer = Featurizer(model.featurizer_settings)
    settings = SupercellSettings.from_dict(model.supercell)
    rows = _witman_rows(args.data)[: args.n]
    root = Path(args.data) / "witman2023_vacancies" / "structures"
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in rows:
            with t("cif_parse"):
                host = read_structure(root / f"{row['id']}.cif")
            with t("symmetry_canonical_host"):  # measured apart; build_vacancy repeats it
                canonical_host(host, 0, settings.symprec)
            with t("_build_vacancy"):
                vac = build_vacancy(host, 0, settings)
            with t("graph_neighbour_search"):
                graph = build_vacancy_graph(vac, featurizer)
            with t("oxidation_states"):
                guess_oxidation_states(vac.canonical.primitive, vac.canonical.numbers)
            with t("pack_and_hops"):  # its own oxidation call hits the memo filled just above
                parts.append(pack_vacancy(graph, vac, row["id"], float(row["dH_eV"])))
        with t("concatenate"):
            packed = PackedVacancies.concatenate(parts)
    features = _advisor_features_timed(expert, packed, t)
    pred = _model_only(expert, packed, features, t, "expert")
    t.wall["supercell_construction"] = t.wall["_build_vacancy"] - t.wall["symmetry_canonical_host"]
    t.cpu["supercell_construction"] = t.cpu["_build_vacancy"] - t.cpu["symmetry_canonical_host"]
    n = len(rows)
    stages = {k: v for k, v in t.wall.items() if not k.startswith("_")}
    total = sum(stages.values())
    return {"n_vacancies": n, "torch_threads": threads, "expert": _expert_name(expert),
            "python_and_imports_s": round(t_import, 3),
            "stages_total_s": round(total, 3),
            "share": {k: round(v / total, 3) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
            "mae_vs_dft_eV": round(float(np.abs(pred - packed.targets).mean()), 4),
            "mean_nodes_full": float(np.diff(packed.graphs.node_ptr).mean()), **t.as_dict(n)}


def step_make_tables(args) -> dict:
    """Input tables for the prediction steps (setup, not a measurement): every
    symmetry-distinct site of the first ``hosts`` host compounds."""
    from adex.io import read_structure
    from adex.supercell import distinct_sites

    rows = _witman_rows(args.data)
    root = (Path(args.data) / "witman2023_vacancies" / "structures").resolve()
    first_of_host: dict[str, str] = {}
    for row in rows:
        first_of_host.setdefault(row["host"], row["id"])
    hosts = list(first_of_host.items())[: args.hosts]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, n_sites = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for host, vid in hosts:
            path = root / f"{vid}.cif"
            sites = distinct_sites(read_structure(path), 0.01)
            n_sites.append(len(sites))
            table += [(str(path), s.index, host, s.element, s.wyckoff) for s in sites]
    with open(out_dir / "all_sites.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["structure", "site", "host", "element", "wyckoff"])
        writer.writerows(table)
    (out_dir / "hosts.txt").write_text("".join(f"{root / (vid + '.cif')}\n" for _, vid in hosts))
    return {"n_hosts": len(hosts), "n_vacancies": len(table), "sites_per_host_mean": float(np.mean(n_sites)),
            "sites_per_host_max": int(np.max(n_sites))}


# --------------------------------------------------------------------------- scaling


def step_supercell(args) -> dict:
    """A fixed set of vacancies with supercells of minimum image distance ``d``: featurization
    (CIF to packed graph), graph sizes (full and pruned), advisors, expert on the pruned graph
    (what adex does) and on the full graph, predictions (shipped expert, trained at 8 Å)."""
    from adex.expert.data import PackedVacancies, featurize_vacancy
    from adex.graphs import Featurizer
    from adex.io import read_structure
    from adex.supercell import SupercellSettings

    threads = _torch_threads(args.threads)
    t = Timer()
    expert = _load_builtin_expert(t)
    model = expert.model
    featurizer = Featurizer(model.featurizer_settings)
    settings = SupercellSettings(min_image_distance=args.min_image, symprec=model.supercell.get("symprec", 0.01))
    rows = _spread(_witman_rows(args.data), args.n)
    root = Path(args.data) / "witman2023_vacancies" / "structures"
    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in rows:
            with t("featurize"):
                host = read_structure(root / f"{row['id']}.cif")
                parts.append(featurize_vacancy(host, 0, row["id"], float(row["dH_eV"]), featurizer, settings))
        packed = PackedVacancies.concatenate(parts)
    features = _advisor_features_timed(expert, packed, t)
    pruned = model.prepare(packed)
    pred = _model_only(expert, packed, features, t, "model_pruned")
    pred_full = _model_only(expert, packed, features, t, "model_full", prepare=False)
    n = len(rows)
    nodes, nodes_p = np.diff(packed.graphs.node_ptr), np.diff(pruned.graphs.node_ptr)
    return {"min_image_distance_A": args.min_image, "n_vacancies": n, "torch_threads": threads, "expert": _expert_name(expert),
            "ids": [r["id"] for r in rows],
            "featurize_ms_per_vacancy": round(1000 * t.wall["featurize"] / n, 2),
            "featurize_cpu_ms_per_vacancy": round(1000 * t.cpu["featurize"] / n, 2),
            "advisors_ms_per_vacancy": round(1000 * (t.wall["advisor_primitive_graphs"] + t.wall["advisor_networks"]) / n, 2),
            "model_pruned_ms_per_vacancy": round(1000 * (t.wall["model_pruned_prepare"] + t.wall["model_pruned_batches_and_forward"]) / n, 3),
            "model_full_ms_per_vacancy": round(1000 * t.wall["model_full_batches_and_forward"] / n, 3),
            "mean_nodes_full": float(nodes.mean()), "max_nodes_full": int(nodes.max()),
            "mean_nodes_pruned": float(nodes_p.mean()), "max_nodes_pruned": int(nodes_p.max()),
            "mean_edges_full": float(np.diff(packed.graphs.edge_ptr).mean()),
            "mean_edges_pruned": float(np.diff(pruned.graphs.edge_ptr).mean()),
            "max_abs_diff_pruned_vs_full_eV": float(np.abs(pred - pred_full).max()),
            "predictions_eV": [round(float(p), 4) for p in pred],
            "mae_vs_dft_eV": round(float(np.abs(pred - packed.targets).mean()), 4), **t.as_dict(n)}


STEPS = {"mp": step_mp, "witman_pristine": step_witman_pristine, "witman_vacancies": step_witman_vacancies,
         "model_only": step_model_only, "profile": step_profile, "make_tables": step_make_tables,
         "supercell": step_supercell}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--result", required=True, help="JSON file to write")
    parser.add_argument("--data", default=os.environ.get("ADEX_DATA", "../shared/data"))
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cutoff", type=float, default=None)
    parser.add_argument("--min-image", type=float, default=None)
    parser.add_argument("--replicate", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="expert batch size (adex predict's default: 32)")
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--reference-size", action="store_true", help="model_only: an expert of the reference's size")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    result = STEPS[args.step](args)
    result["process_inner_wall_s"] = round(time.perf_counter() - _T_START, 3)
    result["process_inner_cpu_s"] = round(time.process_time() - _C_START, 3)
    try:
        import torch

        result.setdefault("torch_threads", torch.get_num_threads())
    except ImportError:
        pass
    Path(args.result).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
