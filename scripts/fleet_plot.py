"""Exchanges per second over time, today's schedule against the jittered one, from the CSVs
`keyless-bench fleet --csv DIR` writes (one per cloud). Run by scripts/fleet-plot."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(path):
    seconds, fixed, jittered = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            seconds.append(int(row["second"]) / 3600)
            fixed.append(int(row["fixed_calls"]))
            jittered.append(int(row["jittered_calls"]))
    return seconds, fixed, jittered


def smooth(values, width=10):
    """Calls per second averaged over `width`-second bins (what a dashboard shows)."""
    out = []
    for i in range(0, len(values), width):
        chunk = values[i : i + width]
        out.extend([sum(chunk) / len(chunk)] * len(chunk))
    return out


def main(csv_dir, cloud, quota, out):
    hours, fixed, jittered = series(f"{csv_dir}/fleet-{cloud}.csv")
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True, sharey=True)
    for ax, values, title in (
        (axes[0], fixed, "today: every refresh at refresh_at (refresh_jitter = 0)"),
        (axes[1], jittered, "new: refresh_jitter = 0.4 (the default)"),
    ):
        ax.plot(hours, smooth(values), linewidth=0.7)
        ax.axhline(quota, color="red", linewidth=0.8, linestyle="--", label=f"quota {quota:g}/s")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("exchanges/s (10 s bins)")
        ax.legend(loc="upper right", fontsize=8)
    axes[1].set_xlabel("hours since the rollout started")
    fig.suptitle(f"10,000 pods rolled out over 60 s, 1 h credentials, {cloud}'s throttling answers")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
