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


def throttled_by_phase(path, steady_from_hours=1.5):
    """Throttled share of calls before and after three refresh cycles, per schedule."""
    sums = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            phase = "steady" if int(row["second"]) >= steady_from_hours * 3600 else "rollout"
            for schedule in ("fixed", "jittered"):
                calls, throttled = sums.get((schedule, phase), (0, 0))
                sums[(schedule, phase)] = (calls + int(row[f"{schedule}_calls"]), throttled + int(row[f"{schedule}_throttled"]))
    for (schedule, phase), (calls, throttled) in sorted(sums.items()):
        share = 100 * throttled / calls if calls else 0
        print(f"{path}: {schedule}, {phase} (first 1.5 h / after): {throttled} of {calls} calls throttled ({share:.1f}%)")


def smooth(values, width=10):
    """Calls per second averaged over `width`-second bins (what a dashboard shows)."""
    out = []
    for i in range(0, len(values), width):
        chunk = values[i : i + width]
        out.extend([sum(chunk) / len(chunk)] * len(chunk))
    return out


def main(csv_dir, cloud, quota, out):
    for name in ("aws", "gcp", "azure"):
        try:
            throttled_by_phase(f"{csv_dir}/fleet-{name}.csv")
        except FileNotFoundError:
            pass
    hours, fixed, jittered = series(f"{csv_dir}/fleet-{cloud}.csv")
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True, sharey=True)
    for ax, values, title in (
        (axes[0], fixed, "today: every refresh at refresh_at (refresh_jitter = 0)"),
        (axes[1], jittered, "new: refresh_jitter = 0.6 (the default)"),
    ):
        smoothed = smooth(values)
        ax.plot(hours, smoothed, linewidth=0.7)
        # The rollout's throttled retries reach far above the quota; the steady state is the story.
        ax.set_ylim(0, 2 * quota)
        ax.annotate(f"rollout: up to {max(smoothed):.0f}/s attempted (clipped)", xy=(0.02, 1.9 * quota),
                    fontsize=8, va="top")
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
