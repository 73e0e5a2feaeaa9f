"""Summary and figure of a finished ``adex screen`` folder (small files, fit to commit).

Reads ``SCREEN/summary.json`` and the ``hosts``/``vacancies``/``errors`` partitions and
writes to ``--out``: ``screen_summary.md`` (totals, throughput, peak memory per worker,
errors by reason, the lowest O-vacancy dH per host in numbers), ``screen_summary.json``
and ``screen.png`` (left: distribution of the lowest O-vacancy dH per host; right: time
per host against its number of atoms). Never copies the Parquet partitions.

    python benchmarks/screen_report.py $ADEX_HOME/screens/mp --out benchmarks/results/screen [--note TEXT]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def partial_summary(screen: Path, manifest: dict, peak_rss_mb: str) -> dict:
    """Totals of a screen without summary.json: counted from its partitions; wall time from
    the manifest's start to the newest partition file (the run's own start-up included)."""
    import datetime as dt

    from adex.expert.screening import ScreenSummary, _totals

    summary = ScreenSummary(out=str(screen), expert=manifest["expert"], status=manifest.get("status", "unknown"))
    _totals(screen, summary)
    files = list((screen / "vacancies").glob("part-*.parquet"))
    start = dt.datetime.fromisoformat(manifest["started"]).timestamp()
    wall = max(p.stat().st_mtime for p in files) - start
    summary.tasks = summary.run_hosts = 0
    summary.wall_time_s = round(wall, 1)
    summary.run_vacancies, summary.run_hosts = summary.vacancies, summary.hosts
    summary.vacancies_per_s = round(summary.vacancies / wall, 2)
    summary.hosts_per_s = round(summary.hosts / wall, 2)
    summary.tasks = len(files)
    summary.peak_rss_mb_per_worker = {f"worker{k}": float(v) for k, v in enumerate(peak_rss_mb.split(",")) if v}
    summary.workers = len(summary.peak_rss_mb_per_worker)
    summary.load_average = []
    return summary.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("screen", help="an adex screen output folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="", help="a line added under the title (machine, load, command)")
    parser.add_argument("--peak-rss-mb", default="", help="peak RSS per worker (MB, comma-separated) when the screen "
                                                          "has no summary.json (stopped before writing it)")
    args = parser.parse_args()

    import pandas as pd
    import pyarrow.dataset as ds

    screen, out = Path(args.screen), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((screen / "screen.json").read_text())
    if (screen / "summary.json").is_file():
        summary = json.loads((screen / "summary.json").read_text())
    else:  # a screen stopped before it could write its summary: totals from the partitions
        summary = partial_summary(screen, manifest, args.peak_rss_mb)
    summary.setdefault("status", manifest.get("status", "finished"))
    host_data = ds.dataset(screen / "hosts", format="parquet")
    trusted = "in_domain" in host_data.schema.names  # screen format 2: trust columns
    hosts = host_data.to_table(columns=["host_id", "formula", "n_atoms", "n_primitive", "n_vacancies", "min_dH_eV",
                                        "time_s"] + (["in_domain"] if trusted else [])).to_pandas()
    vac = ds.dataset(screen / "vacancies", format="parquet").to_table(
        columns=["host_id", "element", "dH_pred_eV"] + (["dH_lo_eV", "dH_hi_eV", "in_domain"] if trusted else [])).to_pandas()
    o_min = vac[vac.element == "O"].groupby("host_id").dH_pred_eV.min()
    trusted = trusted and hosts["in_domain"].notna().any()  # null: an expert without a trust record
    inside = set(hosts.host_id[hosts.in_domain.fillna(False).astype(bool)]) if trusted else set()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(*(np.percentile(o_min.values, [0.1, 99.9]) if len(o_min) else (0, 1)), 80)
    left.hist(o_min.values, bins=bins, color="tab:red", alpha=0.8, label="all hosts with O")
    if trusted:
        left.hist(o_min[o_min.index.isin(inside)].values, bins=bins, color="tab:blue", alpha=0.9,
                  label="hosts in the applicability domain")
        left.legend(fontsize=8)
    left.set_xlabel("lowest O-vacancy dH per host (eV)")
    left.set_ylabel("hosts")
    left.set_title(f"{len(o_min):,} hosts with O, {summary['expert']}", fontsize=9)
    right.scatter(hosts.n_atoms, 1000 * hosts.time_s, s=2, alpha=0.25)
    med = hosts.groupby("n_atoms").time_s.median()
    right.plot(med.index, 1000 * med.values, color="k", lw=1, label="median")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("atoms in the input cell")
    right.set_ylabel("time per host (ms, one worker)")
    right.set_title("featurization + share of the batched prediction", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "screen.png", dpi=110)
    plt.close(fig)

    q = np.percentile(o_min.values, [5, 25, 50, 75, 95]) if len(o_min) else [np.nan] * 5
    per_size = hosts.assign(bucket=pd.cut(hosts.n_atoms, [0, 4, 8, 16, 32, 64, 1000])).groupby(
        "bucket", observed=True).agg(hosts=("host_id", "size"), ms_median=("time_s", lambda t: 1000 * np.median(t)),
                                     vacancies=("n_vacancies", "sum"))
    status = "" if summary["status"] == "finished" else f" ({summary['status']}: partial)"
    lines = [f"# Screen of {summary['hosts']:,} crystals with {summary['expert']}{status}", ""]
    if args.note:
        lines += [args.note, ""]
    lines += [
        f"Inputs: {', '.join(Path(p).name for p in manifest['inputs'])}; {manifest['hosts_per_task']} hosts per task; "
        f"{summary['workers']} Dask workers ({manifest.get('scheduler', 'LocalCluster')}).", "",
        "| | |", "|---|---|",
        f"| hosts | {summary['hosts']:,} |",
        f"| hosts predicted | {summary['hosts_predicted']:,} |",
        f"| hosts with errors | {summary['hosts_with_errors']:,} |",
        f"| distinct vacancies predicted | {summary['vacancies']:,} |",
        f"| wall time (this run, startup included) | {summary['wall_time_s']:.0f} s |",
        f"| vacancies/s (this run) | {summary['vacancies_per_s']:.1f} |",
        f"| hosts/s (this run) | {summary['hosts_per_s']:.1f} |",
        f"| partitions resumed | {summary['tasks_skipped']} of {summary['tasks']} |",
        f"| peak RSS per worker process (MB) | {', '.join(f'{v:.0f}' for v in summary['peak_rss_mb_per_worker'].values())} |",
        f"| load average at start / end (1, 5, 15 min) | {' / '.join(', '.join(f'{x:.2f}' for x in summary['load_average'][i:i + 3]) for i in (0, 3)) or 'not recorded'} |",
        "", "## Errors by reason", "", "| reason | error rows (hosts or sites) | hosts |", "|---|---:|---:|"]
    errors = ds.dataset(screen / "errors", format="parquet").to_table(columns=["host_id", "source", "reason"]).to_pandas()
    host_counts = errors.drop_duplicates(["host_id", "source", "reason"]).reason.value_counts()
    lines += [f"| {reason} | {count:,} | {int(host_counts.get(reason, 0)):,} |"
              for reason, count in summary["errors_by_reason"].items()]
    failed = sorted(set(errors.host_id))
    lines += ["", f"Hosts with errors: {', '.join(failed[:30])}{' ...' if len(failed) > 30 else ''}"]
    lines += ["", "## Lowest O-vacancy dH per host", "",
              f"{len(o_min):,} hosts contain O. Percentiles 5/25/50/75/95: " + ", ".join(f"{v:.2f}" for v in q) + " eV.",
              "", "## Time per host by size (one worker; featurization plus its share of the chunk's prediction)", "",
              "| atoms | hosts | vacancies | median ms/host |", "|---|---:|---:|---:|"]
    lines += [f"| {b} | {int(r.hosts):,} | {int(r.vacancies):,} | {r.ms_median:.0f} |" for b, r in per_size.iterrows()]
    if trusted:
        o_in = o_min[o_min.index.isin(inside)]
        q_in = np.percentile(o_in.values, [5, 25, 50, 75, 95]) if len(o_in) else [np.nan] * 5
        width = (vac.dH_hi_eV - vac.dH_lo_eV).to_numpy()
        vac_in = vac.in_domain.fillna(False).astype(bool).to_numpy()
        lines += ["", "## Trust (the expert's calibrated 90 % intervals and applicability domain)", "",
                  f"{len(inside):,} of {len(hosts):,} predicted hosts are in the domain (every vacancy in domain); "
                  f"{int(vac_in.sum()):,} of {len(vac):,} vacancies. Median 90 % interval width {np.nanmedian(width):.2f} eV"
                  + (f" (in domain {np.nanmedian(width[vac_in]):.2f} eV)." if vac_in.any() else ".")
                  + (f" In-domain hosts with O: {len(o_in):,}, lowest O-vacancy dH percentiles 5/25/50/75/95: "
                     + ", ".join(f"{v:.2f}" for v in q_in) + " eV." if len(o_in) else "")]
    time_s = hosts.time_s.to_numpy()
    lines += ["", "## Cost per host (for projections: docs/screening.md)", "",
              f"Summed per-host time (one worker each) {time_s.sum():,.0f} s for {len(hosts):,} hosts: mean "
              f"{1000 * time_s.mean():.0f} ms per host, {1000 * time_s.sum() / max(len(vac), 1):.1f} ms per vacancy "
              f"({len(vac) / max(len(hosts), 1):.2f} distinct vacancies per host); the slowest 1 % of hosts take "
              f"{100 * np.sort(time_s)[-max(len(time_s) // 100, 1):].sum() / max(time_s.sum(), 1e-9):.0f} % of it; "
              f"slowest host {time_s.max():.1f} s."]
    lines += ["", "![screen](screen.png)", ""]
    (out / "screen_summary.md").write_text("\n".join(lines))
    keep = {k: summary[k] for k in summary if k != "out"}
    keep["o_vacancy_min_dH_percentiles_eV"] = dict(zip(["p5", "p25", "p50", "p75", "p95"], map(float, q)))
    keep["host_seconds_sum"] = float(time_s.sum())
    keep["ms_per_host_mean"] = float(1000 * time_s.mean()) if len(time_s) else None
    keep["ms_per_vacancy_mean"] = float(1000 * time_s.sum() / max(len(vac), 1))
    keep["vacancies_per_host"] = float(len(vac) / max(len(hosts), 1))
    if trusted:
        keep["hosts_in_domain"] = len(inside)
        keep["vacancies_in_domain"] = int(vac.in_domain.fillna(False).astype(bool).sum())
    (out / "screen_summary.json").write_text(json.dumps(keep, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
