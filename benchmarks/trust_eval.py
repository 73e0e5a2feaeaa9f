"""Trust on new hosts (issue 26), measured on the per-compound folds of the shipped
expert's recipe: calibrated intervals, the applicability domain, and the correction from a
few DFT numbers. No training: the held-out predictions of the cross-validation are in
``benchmarks/results/experiments/heldout_predictions.csv.gz``.

    ADEX_DATA=../shared/data python benchmarks/trust_eval.py --out benchmarks/results/trust
        [--expert builtin::expert/vacancy:6] [--experiment chgnet_augment_struct]
        [--repeats 20] [--seed 0] [--trust-dir DIR] [--register NAME]

Writes ``trust_eval.json`` (every number), ``calibration.png`` (coverage vs nominal per
scheme, coverage per fold), ``domain.png`` (MAE by domain decile) into ``--out``, and the
trust model (``trust.json`` + ``trust.arrays``, ~1 MB) into ``--trust-dir`` (default
``OUT/trust_model``). ``--register NAME`` registers a new version ``expert/NAME`` of
``--expert`` carrying the trust model in the user registry (``adex.expert.trust.register_trusted``).

The advisors embed the 199 Witman hosts once (about a minute with CHGNet on one core); the
embeddings are cached under ``$ADEX_HOME/cache/trust_eval``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NOMINALS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for trust_eval.json and the figures")
    p.add_argument("--expert", default="builtin::expert/vacancy:6")
    p.add_argument("--experiment", default="chgnet_augment_struct",
                   help="the CV of the expert's recipe on the per-compound folds (benchmarks/experiments.sh)")
    p.add_argument("--summaries", default=str(REPO / "benchmarks" / "results" / "experiments"))
    p.add_argument("--data", default=None, help="data root (default $ADEX_DATA)")
    p.add_argument("--nominal", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=20, help="random label draws per host and k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-dir", help="where to save the trust model (default OUT/trust_model)")
    p.add_argument("--register", metavar="NAME", help="register expert/NAME: --expert + the trust model (user registry)")
    p.add_argument("--registry", help="user registry root (default $ADEX_HOME/registry)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- inputs
def cached_inputs(loaded, ids, data):
    """Domain inputs of the Witman vacancies ``ids`` (cached per expert and id list)."""
    import hashlib

    from adex.expert.domain import DomainInputs
    from adex.expert.trust import witman_inputs
    from adex.fileio import atomic_write_bytes, pack_arrays, unpack_arrays
    from adex.paths import cache_dir

    key = hashlib.sha256("|".join([loaded.entry.ref, *(s.weights_sha256 or "" for s in loaded.model.advisors),
                                   *ids]).encode()).hexdigest()[:24]
    path = cache_dir() / "trust_eval" / f"{key}.arrays"
    if path.is_file():
        a = unpack_arrays(path.read_bytes(), require_checksum=True)
        species = json.loads(str(a["species"]))
        return DomainInputs(a["embedding"], a["element"], a["host"], {h: tuple(s) for h, s in species.items()})
    inputs = witman_inputs(loaded, ids, data)
    atomic_write_bytes(path, pack_arrays({"embedding": inputs.embedding, "element": inputs.element.astype(str),
                                          "host": inputs.host.astype(str),
                                          "species": np.array(json.dumps({h: list(s) for h, s in inputs.species.items()}))}))
    return inputs


# ---------------------------------------------------------------------- intervals
def interval_schemes(table, nominal):
    """Cross-conformal half widths of three schemes at ``nominal`` (eV)."""
    from adex.expert.calibration import cross_conformal

    err = np.abs(table["residual"].to_numpy())
    folds = table["fold"].to_numpy()
    metal = table["is_metal"].to_numpy()
    ones = np.ones(len(table))
    return {
        "constant (one quantile of |r|)": cross_conformal(err, np.zeros(len(table), bool), ones, folds, None, nominal, 1),
        "by class (O / metal)": cross_conformal(err, metal, ones, folds, None, nominal, 1),
        "scaled by class + domain, Mondrian by domain bin (shipped)":
            cross_conformal(err, metal, table["domain"].to_numpy(), folds, table["novel"].to_numpy(), nominal, 3),
    }


def intervals_section(table, nominal):
    from adex.expert.calibration import coverage_report

    err = np.abs(table["residual"].to_numpy())
    folds = table["fold"].to_numpy()
    out = {"nominal": nominal, "schemes": {}, "curve": {}}
    for name, half in interval_schemes(table, nominal).items():
        out["schemes"][name] = coverage_report(err, half, folds)
    for level in NOMINALS:
        for name, half in interval_schemes(table, level).items():
            out["curve"].setdefault(name, {})[str(level)] = float((err <= half).mean())
    half = table["half_width"].to_numpy()
    covered = err <= half
    metal = table["is_metal"].to_numpy()
    out["conditional"] = {
        "O": float(covered[~metal].mean()), "metal": float(covered[metal].mean()),
        "novel": {"n": int(table["novel"].sum()), "coverage": float(covered[table["novel"].to_numpy()].mean())
                  if table["novel"].any() else None},
        "domain_tertiles": [float(covered[b].mean()) for b in _tertiles(table["domain"].to_numpy())],
    }
    return out


def _tertiles(values):
    edges = np.quantile(values, [1 / 3, 2 / 3])
    b = np.digitize(values, edges)
    return [b == k for k in range(3)]


# ---------------------------------------------------------------------- domain
def domain_section(table, trust, inputs):
    from scipy.stats import spearmanr

    from adex.expert.domain import DomainModel

    err = np.abs(table["residual"].to_numpy())
    dom = table["domain"].to_numpy()
    folds = table["fold"].to_numpy()
    high = dom > np.median(dom)
    out = {"spearman_abs_error_domain": float(spearmanr(err, dom).statistic),
           "median_split": {"mae_in_half": float(err[~high].mean()), "mae_out_half": float(err[high].mean()),
                            "ratio": float(err[high].mean() / err[~high].mean())},
           "median_split_per_fold": {}, "flag": {}}
    for fold in np.unique(folds):
        f = folds == fold
        h = dom[f] > np.median(dom[f])
        out["median_split_per_fold"][str(fold)] = float(err[f][h].mean() / err[f][~h].mean())
    novel = table["novel"].to_numpy()
    flag_out = novel | (dom > trust.domain.threshold)
    out["flag"] = {"threshold": trust.domain.threshold, "threshold_quantile": trust.domain.threshold_quantile,
                   "fraction_out": float(flag_out.mean()), "mae_in": float(err[~flag_out].mean()),
                   "mae_out": float(err[flag_out].mean()), "ratio": float(err[flag_out].mean() / err[~flag_out].mean())}
    novel_hosts = []
    for host in sorted(set(table.loc[novel, "host"])):
        rows = table[table["host"] == host]
        novel_hosts.append({"host": host, "fold": rows["fold"].iloc[0], "n": int(len(rows)), "mae": float(np.abs(rows["residual"]).mean())})
    out["novel_hosts"] = novel_hosts
    # by domain decile (figure)
    order = np.argsort(dom)
    out["deciles"] = [{"domain_median": float(np.median(dom[idx])), "mae": float(err[idx].mean())}
                      for idx in np.array_split(order, 10)]
    # the flag fires for hosts with an element absent from training: leave each element out of the reference
    hosts = np.asarray(inputs.host)
    elements_of = {h: {s.rstrip("?+-0123456789") for s in names} for h, names in inputs.species.items()}
    checked, flagged, total, missed = [], 0, 0, []
    for element in sorted(set().union(*elements_of.values()) - {"O"}):
        has = np.array([element in elements_of[h] for h in hosts])
        if has.all() or not has.any():
            continue
        model = DomainModel.fit(inputs.subset(np.flatnonzero(~has)))
        model.threshold = trust.domain.threshold
        part = inputs.subset(np.flatnonzero(has))
        result = model.assess(part)
        per_host = {}
        for h, inside in zip(part.host, result.in_domain):
            per_host[h] = per_host.get(h, False) or (not inside)
        checked.append(element)
        total += len(per_host)
        flagged += sum(per_host.values())
        missed += [f"{element}:{h}" for h, out_ in per_host.items() if not out_]
    out["unseen_element_check"] = {"elements_left_out": len(checked), "hosts_with_left_out_element": total,
                                   "hosts_flagged": flagged, "missed": missed,
                                   "how": "for each non-O element X: domain reference = vacancies of hosts without X; "
                                          "every host with X assessed (Witman embeddings of the expert's advisors)"}
    return out


# ---------------------------------------------------------------------- correction
def correction_eval(table, k, repeats, seed, method="shrinkage", dataset_offset=False, shift=0.0, hosts_per_fold=None):
    """Per fold: prior from the other folds; per test host with >= k+1 vacancies, ``repeats``
    random draws of k labels; errors on the host's other vacancies before and after.
    ``shift`` eV is added to every dH of the chosen hosts (synthetic check)."""
    from adex.expert.correction import OffsetPrior, correct

    rng = np.random.default_rng(seed)
    before, after, covered_before, covered_after, widths, recovered, target_cls, label_match = [], [], [], [], [], [], [], []
    covered_shifted = []
    for fold in sorted(table["fold"].unique()):
        train = table[table["fold"] != fold]
        prior = OffsetPrior.fit(train["residual"].to_numpy(), train["host"].to_numpy(), train["is_metal"].to_numpy().astype(int))
        test = table[table["fold"] == fold]
        host_list = [h for h, rows in test.groupby("host") if len(rows) >= k + 1]
        if hosts_per_fold:
            host_list = list(rng.choice(host_list, size=min(hosts_per_fold, len(host_list)), replace=False))
        for _ in range(repeats):
            labels, targets = [], []
            for host in host_list:
                rows = test[test["host"] == host]
                perm = rng.permutation(len(rows))
                labels.append(rows.iloc[perm[:k]])
                targets.append(rows.iloc[perm[k:]])
            if not targets:
                continue
            import pandas as pd

            L, T = pd.concat(labels), pd.concat(targets)
            r_l = L["residual"].to_numpy() + shift
            r_t = T["residual"].to_numpy() + shift
            cls_l, cls_t = L["is_metal"].to_numpy().astype(int), T["is_metal"].to_numpy().astype(int)
            if method == "raw mean":
                means = pd.Series(r_l).groupby(L["host"].to_numpy()).mean()
                offset = T["host"].map(means).to_numpy()
                ratio = np.ones(len(T))
            else:
                fix = correct(prior, L["host"].to_numpy(), cls_l, r_l, T["host"].to_numpy(), cls_t, dataset_offset)
                offset, ratio = fix.offset, fix.residual_sd / fix.prior_residual_sd
                if shift:
                    base = correct(prior, L["host"].to_numpy(), cls_l, L["residual"].to_numpy(), T["host"].to_numpy(), cls_t,
                                   dataset_offset)
                    recovered.append(float(np.mean(fix.offset - base.offset)))
            half = T["half_width"].to_numpy()
            before.append(np.abs(r_t))
            after.append(np.abs(r_t - offset))
            covered_before.append(np.abs(r_t) <= half)
            covered_after.append(np.abs(r_t - offset) <= half * ratio)
            covered_shifted.append(np.abs(r_t - offset) <= half)
            widths.append(2 * half * ratio)
            target_cls.append(cls_t)
            same_host_cls = [set(cls_l[L["host"].to_numpy() == h]) for h in T["host"].to_numpy()]
            label_match.append(np.array([c in s for c, s in zip(cls_t, same_host_cls)]))
    b, a = np.concatenate(before), np.concatenate(after)
    tc, lm = np.concatenate(target_cls), np.concatenate(label_match)
    out = {"k": k, "method": method, "dataset_offset": bool(dataset_offset), "n_target_errors": int(len(b)),
           "mae_k0": float(b.mean()), "mae_corrected": float(a.mean()), "reduction": float(1 - a.mean() / b.mean()),
           "coverage_k0": float(np.concatenate(covered_before).mean()),
           "coverage_corrected_narrowed": float(np.concatenate(covered_after).mean()),
           "coverage_corrected": float(np.concatenate(covered_shifted).mean()),
           "median_width_narrowed_eV": float(np.median(np.concatenate(widths))),
           "note": "coverage_corrected: interval moved with the correction, width kept (what apply_trust does); "
                   "_narrowed: width times the offset model's residual sd ratio (not used: under-covers)"}
    for name, chosen in (("O_targets", tc == 0), ("metal_targets", tc == 1),
                         ("targets_with_a_label_of_their_class", lm), ("targets_without", ~lm)):
        if chosen.any():
            out[name] = {"n": int(chosen.sum()), "mae_k0": float(b[chosen].mean()), "mae_corrected": float(a[chosen].mean()),
                         "reduction": float(1 - a[chosen].mean() / b[chosen].mean())}
    if recovered:
        out["recovered_shift"] = {"shift": shift, "mean": float(np.mean(recovered)), "min": float(np.min(recovered)),
                                  "max": float(np.max(recovered))}
    return out


def oracle_pair_weights(table):
    """Ceiling for one label: the best single weight w (on a grid) of r_label in r_target -
    w r_label, over all ordered pairs of distinct vacancies of one host, each host weighing
    the same (fitted on the held-out data itself: not a usable model, a bound for this
    model family)."""
    out = {}
    for lc in (0, 1):
        for tc in (0, 1):
            l_all, t_all, w_all = [], [], []
            for _, rows in table.groupby("host"):
                r = rows["residual"].to_numpy()
                c = rows["is_metal"].to_numpy().astype(int)
                n = len(r)
                ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
                pick = (ii != jj) & (c[ii] == lc) & (c[jj] == tc)
                l_all.append(r[ii[pick]])
                t_all.append(r[jj[pick]])
                w_all.append(np.full(pick.sum(), 1.0 / max(n * (n - 1), 1)))
            lab, tgt, w = map(np.concatenate, (l_all, t_all, w_all))
            grid = np.linspace(0, 1.2, 25)
            maes = [np.sum(w * np.abs(tgt - g * lab)) / w.sum() for g in grid]
            best = int(np.argmin(maes))
            out[f"label_{'OM'[lc]}_target_{'OM'[tc]}"] = {"mae_k0": float(np.sum(w * np.abs(tgt)) / w.sum()),
                                                          "best_weight": float(grid[best]), "best_mae": float(maes[best]),
                                                          "reduction": float(1 - maes[best] / (np.sum(w * np.abs(tgt)) / w.sum()))}
    return out


def correction_section(table, repeats, seed):
    out = {"k": {}}
    for k in (1, 2):
        out["k"][str(k)] = {"shrinkage": correction_eval(table, k, repeats, seed),
                            "raw host mean": correction_eval(table, k, repeats, seed, method="raw mean")}
    out["oracle_one_label_weights"] = oracle_pair_weights(table)
    out["synthetic_shift"] = {
        "host offset only": correction_eval(table, 2, repeats, seed, shift=0.7, hosts_per_fold=5),
        "with per-dataset offset": correction_eval(table, 2, repeats, seed, shift=0.7, hosts_per_fold=5, dataset_offset=True),
    }
    return out


# ---------------------------------------------------------------------- context
def _shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it (what a card should name)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


#: How the trust record names the fold scheme of its calibration experiment.
SCHEME_LABELS = {"published_struct": "published_struct (per compound, no host on both sides)",
                 "family": "family (leave structure families out: no family on both sides)"}


def _experiment_row(summaries, experiment: str) -> dict:
    """The experiment's row of the summaries' ``experiments.csv`` ({} when absent)."""
    import pandas as pd

    table = pd.read_csv(Path(summaries) / "experiments.csv", dtype=str, keep_default_na=False)
    rows = table[table["experiment"] == experiment]
    return rows.iloc[0].to_dict() if len(rows) else {}


def _recipe(row: dict) -> str:
    """The experiment's description (advisors, pooling, augmentation, epochs), as ``adex
    report --write-summaries`` wrote it; single models."""
    described = row.get("description", "(not in experiments.csv)")
    return f"{described}; single model per fold, seed {row.get('seed', '?')}"


def _scheme(row: dict) -> str:
    scheme = row.get("scheme", "")
    return SCHEME_LABELS.get(scheme, scheme or "(not in experiments.csv)")


def std_context(summaries, data):
    """Spearman(|error|, ensemble std) per compound for the CVs that have a std."""
    import pandas as pd
    from scipy.stats import spearmanr

    table = pd.read_csv(Path(summaries) / "heldout_predictions.csv.gz", dtype={"id": str, "fold": str})
    out = {}
    for name in ("nodelta_noval_struct_4seeds", "descriptors_noval_relaxshared_struct_8seeds"):
        rows = table[(table["experiment"] == name) & table["dH_std_eV"].notna()]
        if len(rows):
            err = np.abs(rows["dH_eV"] - rows["dH_pred_eV"])
            out[name] = {"n": int(len(rows)), "spearman_abs_error_std": float(spearmanr(err, rows["dH_std_eV"]).statistic),
                         "frac_within_1std": float((err <= rows["dH_std_eV"]).mean())}
    return out


def families_section(data, table):
    from adex.datasets import dataset_root
    from adex.studies.splits import structure_families

    families = structure_families(dataset_root("witman2023_vacancies", data))
    sizes = {}
    for fam in families.values():
        sizes[fam] = sizes.get(fam, 0) + 1
    counts = sorted(sizes.values(), reverse=True)
    shared = []
    for fold in sorted(table["fold"].unique()):
        test_hosts = set(table.loc[table["fold"] == fold, "host"])
        train_fams = {families[h] for h in set(table["host"]) - test_hosts}
        shared.append(np.mean([families[h] in train_fams for h in test_hosts]))
    return {"definition": "anonymised formula of the canonical primitive cell + space group number (spglib, symprec 0.01)",
            "n_hosts": len(families), "n_families": len(sizes), "largest": counts[:10],
            "singletons": int(sum(c == 1 for c in counts)),
            "largest_families": sorted(sizes.items(), key=lambda kv: -kv[1])[:5],
            "per_compound_test_hosts_with_family_in_training": float(np.mean(shared)),
            "family_out_heldout_predictions": "none: leave-one-family-out folds need new CV training runs "
                                              "(scheme 'family' in adex.studies.splits.make_folds)"}


# ---------------------------------------------------------------------- figures
def figures(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iv = results["intervals"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    for name, curve in iv["curve"].items():
        xs = [float(x) for x in curve]
        ax.plot(xs, list(curve.values()), "o-", label=name, ms=4)
    ax.plot([0.45, 1], [0.45, 1], "k--", lw=1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("held-out coverage (10 per-compound folds, pooled)")
    ax.set_title("cross-conformal intervals, per-compound CV", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    shipped = [k for k in iv["schemes"] if "shipped" in k][0]
    per_fold = iv["schemes"][shipped]["per_fold"]
    ax.bar(range(len(per_fold)), list(per_fold.values()))
    ax.axhline(iv["nominal"], color="k", ls="--", lw=1)
    ax.axhline(0.8, color="r", ls=":", lw=1)
    ax.set_xticks(range(len(per_fold)), [k.replace("1.00", "").replace("_struct", "") for k in per_fold], fontsize=7)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel(f"coverage of {iv['nominal']:.0%} intervals")
    ax.set_title("per fold (shipped scheme)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=110)
    plt.close(fig)

    dec = results["domain"]["deciles"]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([d["domain_median"] for d in dec], [d["mae"] for d in dec], "o-")
    ax.axvline(results["domain"]["flag"]["threshold"], color="r", ls=":", lw=1, label="out-of-domain threshold")
    ax.set_xlabel("domain (decile median)")
    ax.set_ylabel("MAE (eV), per-compound held out")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "domain.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from adex.datasets import dataset_root
    from adex.expert.loading import load_expert
    from adex.expert.trust import build_trust, heldout_residuals
    from adex.fileio import sha256_file
    from adex.registry import Registry

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    registry = Registry(root=args.registry)
    loaded = load_expert(args.expert, registry)
    residuals = heldout_residuals(args.summaries, args.experiment, args.data)
    root = dataset_root("witman2023_vacancies", args.data)
    import pandas as pd

    all_ids = pd.read_csv(root / "vacancies.csv", dtype={"id": str})["id"].tolist()
    everything = cached_inputs(loaded, all_ids, args.data)
    position = {vid: k for k, vid in enumerate(all_ids)}
    inputs = everything.subset([position[v] for v in residuals["id"]])
    summaries = Path(args.summaries)
    row = _experiment_row(summaries, args.experiment)
    source = {"experiment": args.experiment, "scheme": _scheme(row),
              "folds": sorted(residuals["fold"].unique().tolist()), "n": int(len(residuals)),
              "n_hosts": int(residuals["host"].nunique()),
              "file": _shown_path(summaries / "heldout_predictions.csv.gz"),
              "file_sha256": sha256_file(summaries / "heldout_predictions.csv.gz"),
              "recipe": _recipe(row)}
    trust, cv = build_trust(loaded, residuals, inputs, everything, nominal=args.nominal, source=source)
    table = cv.table
    trust_dir = Path(args.trust_dir) if args.trust_dir else out_dir / "trust_model"
    trust.save(trust_dir)
    results = {
        "command": "python benchmarks/trust_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "expert": loaded.entry.ref, "source": source,
        "intervals": intervals_section(table, args.nominal),
        "domain": domain_section(table, trust, everything),
        "correction": correction_section(table, args.repeats, args.seed),
        "ensemble_std_context": std_context(args.summaries, args.data),
        "families": families_section(args.data, table),
        "record": trust.record(),
        "seconds": None,
    }
    results["record"]["domain"].pop("species", None)
    if args.register:
        from adex.expert.trust import register_trusted

        entry = register_trusted(args.expert, registry, trust, name=args.register)
        results["registered"] = entry.ref
        print(f"registered {entry.ref}")
    results["seconds"] = round(time.time() - t0, 1)
    (out_dir / "trust_eval.json").write_text(json.dumps(results, indent=1) + "\n")
    figures(results, out_dir)
    summary(results)
    return 0


def summary(results) -> None:
    iv = results["intervals"]
    for name, rep in iv["schemes"].items():
        print(f"{name}: pooled {rep['pooled']:.3f}, min fold {rep['min_fold']:.3f}, median width {rep['median_width_eV']:.2f} eV, "
              f"Spearman pooled {rep['spearman_abs_error_width']:.3f} / per fold {rep['spearman_per_fold_mean']:.3f}")
    d = results["domain"]
    print(f"domain: median split MAE {d['median_split']['mae_out_half']:.3f} / {d['median_split']['mae_in_half']:.3f} = "
          f"{d['median_split']['ratio']:.2f}x; flag ({d['flag']['fraction_out']:.0%} out) {d['flag']['ratio']:.2f}x; "
          f"unseen-element check {d['unseen_element_check']['hosts_flagged']}/{d['unseen_element_check']['hosts_with_left_out_element']}")
    for k, methods in results["correction"]["k"].items():
        for name, r in methods.items():
            print(f"k={k} {name}: MAE {r['mae_k0']:.3f} -> {r['mae_corrected']:.3f} ({-100 * r['reduction']:+.1f} %), "
                  f"coverage {r['coverage_k0']:.3f} -> {r['coverage_corrected']:.3f} (width kept; "
                  f"{r['coverage_corrected_narrowed']:.3f} narrowed)")
    for name, r in results["correction"]["synthetic_shift"].items():
        rs = r["recovered_shift"]
        print(f"synthetic +0.7 eV, 2 labels ({name}): recovered {rs['mean']:.3f} eV (min {rs['min']:.3f}, max {rs['max']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
