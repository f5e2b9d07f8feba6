"""Exchanges per second over time, sidecar mode against node mode, from the CSV
`keyless-bench fleet-node --csv DIR` writes (one per cloud; its first line names the modes with
their caches, exchanges per hour and memory). Same style as fleet_plot.py. Run by
scripts/fleet-node-plot."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fleet_plot import smooth  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        meta = f.readline().lstrip("# ").strip()
        modes = []
        for part in meta.split("|"):
            key, rest = part.split("=", 1)
            name, *fields = rest.split(";")
            modes.append((key, name, dict(field.split("=", 1) for field in fields)))
        rows = list(csv.DictReader(f))
    hours = [int(row["second"]) / 3600 for row in rows]
    series = {key: [int(row[f"{key}_calls"]) for row in rows] for key, _, _ in modes}
    return modes, hours, series


def main(csv_dir, cloud, quota, out):
    modes, hours, series = read(f"{csv_dir}/fleet-node-{cloud}.csv")
    fig, axes = plt.subplots(len(modes), 1, figsize=(11, 2.6 * len(modes)), sharex=True, sharey=True)
    for ax, (key, name, info) in zip(axes, modes):
        smoothed = smooth(series[key])
        ax.plot(hours, smoothed, linewidth=0.7)
        ax.set_ylim(0, 2 * quota)
        ax.annotate(f"rollout: up to {max(smoothed):.0f}/s attempted (clipped)", xy=(0.02, 1.9 * quota),
                    fontsize=8, va="top")
        ax.axhline(quota, color="red", linewidth=0.8, linestyle="--", label=f"quota {quota:g}/s")
        ax.set_title(f"{name}: {int(info['caches']):,} caches exchanging, {int(info['per_hour']):,} exchanges/hour "
                     f"(steady), memory {info['memory']}", fontsize=10)
        ax.set_ylabel("exchanges/s (10 s bins)")
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("hours since the rollout started")
    fig.suptitle(f"10,000 pods on 100 nodes, Deployments of 1-100 replicas, 1 h credentials, {cloud}'s throttling "
                 "answers: sidecar against node mode")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
