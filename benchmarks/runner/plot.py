"""Draw the benchmark results as one PNG.

Runs in the tools environment (``benchmarks/.venvs/tools``, matplotlib), never
in the project's: ``python runner/plot.py results.json out.png``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

COLORS = {
    "floor": "#9e9e9e",
    "project": "#d9480f",
    "baseline": "#f4a261",
    "peer": "#4c8bd6",
}


def bench(output: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((b for b in output["benchmarks"] if b["name"] == name), None)


def bars(
    ax: Any,
    rows: list[dict[str, Any]],
    metric: str,
    title: str,
    unit: str,
    log: bool = False,
) -> None:
    """Horizontal bars; a row without the metric shows as 'n/a' (it did not run)."""
    if not any(r.get(metric) is not None for r in rows):
        ax.set_title(f"{title}\n(no data)", fontsize=9)
        ax.axis("off")
        return
    labels = [r["label"] for r in rows]
    values = [r.get(metric) for r in rows]
    present = [v for v in values if v is not None]
    y = list(range(len(rows)))
    ax.barh(
        y,
        [v if v is not None else 0 for v in values],
        color=[COLORS[r["role"]] for r in rows],
    )
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    if log:
        ax.set_xscale("log")
    anchor = min(present) if log else 0
    for i, v in enumerate(values):
        if v is None:
            ax.text(anchor, i, " n/a (did not run)", va="center", fontsize=6)
        else:
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=6)


def main() -> None:
    with open(sys.argv[1]) as file:
        output = json.load(file)
    fig, axes = plt.subplots(3, 3, figsize=(16, 12))
    flat = axes.ravel()
    i = 0
    for kind, label in (("redis", "Redis"), ("nats", "NATS")):
        for mode, mode_label in (("seq", "sequential"), ("conc", "8 coroutines")):
            b = bench(output, f"lock-{kind}-{mode}")
            if i < 4 and b is not None:
                bars(
                    flat[i],
                    b["rows"],
                    "ratio",
                    f"{label} lock cycle, {mode_label}",
                    "ratio to raw floor (higher is better)",
                )
                flat[i].axvline(1.0, color="black", lw=0.6, ls="--")
            i += 1
    scheds = [b for b in output["benchmarks"] if b["name"].startswith("scheduler-")]
    if scheds:
        b = max(scheds, key=lambda x: x["jobs"])
        n = f"{b['jobs']:,} jobs"
        cron = bench(output, f"cron-{b['jobs']}")
        # Interval and cron targets of the same run, in one panel each.
        b = {**b, "rows": b["rows"] + (cron["rows"] if cron else [])}
        bars(
            flat[4],
            b["rows"],
            "cpu_per_s",
            f"Scheduler, {n}: CPU",
            "CPU s per wall s (lower is better)",
        )
        bars(
            flat[5],
            b["rows"],
            "peak_rss_mib",
            f"Scheduler, {n}: peak RSS",
            "MiB (lower is better)",
        )
        bars(
            flat[6],
            b["rows"],
            "startup_s",
            f"Scheduler, {n}: start-up",
            "s, log scale (lower is better)",
            log=True,
        )
    load = bench(output, "load")
    if load:
        bars(
            flat[7],
            load["rows"],
            "client_rt_per_exec",
            "Round trips per locked execution, 3 workers",
            "client round trips (lower is better)",
        )
        flat[7].axvline(0.1, color="black", lw=0.6, ls="--")
    takeover = bench(output, "takeover")
    if takeover:
        rows = []
        for row in takeover["rows"]:
            for kind, name in (("graceful_s", "graceful"), ("sigkill_s", "SIGKILL")):
                if row.get(kind) is not None:
                    rows.append(
                        {
                            "label": f"{row['label']}, {name}",
                            "role": row["role"],
                            "v": row[kind],
                        }
                    )
        bars(
            flat[8],
            rows,
            "v",
            "Takeover: stop to next leader-gated run",
            "s, log scale (lower is better)",
            log=True,
        )
    machine = output.get("machine", {})
    fig.suptitle(
        f"grelmicro benchmarks — {machine.get('date', '')}, {machine.get('nproc', '?')} cores "
        f"({machine.get('cpu_model', '')}), {output.get('mode')} mode",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
