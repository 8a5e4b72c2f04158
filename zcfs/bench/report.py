"""Show a results document: the table for people, the PNG chart."""

from __future__ import annotations

from pathlib import Path

from .runner import UNSTEADY


def describe(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    return (f"Linux {m['kernel']}, {m['cpus']} CPUs ({m['cpu_model']}), backing {m['backing_fs']}; "
            f"suite {doc['suite']}, scale {s['scale']}, {s['rounds']} rounds")


def ratio_text(ratio: float | None) -> str:
    """Speed relative to direct access; far below 1 also as "N× slower", which reads better."""
    if ratio is None:
        return "-"
    return f"{ratio:.2f}" if ratio >= 0.5 else f"{ratio:.2f} ({1 / ratio:.0f}x)"


def _seconds_text(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.2f} ms"  # (the time a backing change takes to show: visible-p50)
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _value_text(row: dict) -> str:
    value, unit = row["value"], row["unit"]
    if unit == "s":
        return _seconds_text(value)
    return f"{value:,.0f} {unit}"


def _spread_text(row: dict) -> str:
    low, high = row["spread"]
    return f"±{(high - low) / 2 / row['value'] * 100:.0f}%" if row["value"] else "-"


def _cpu_text(row: dict) -> str:
    if row["cpu_s_per_gib"] is not None:
        return f"{row['cpu_s_per_gib']:.2f} s/GiB"
    if row["daemon_cpu_s"] is not None:
        return f"{row['daemon_cpu_s']:.2f} s"
    return ""


def _rss_text(row: dict) -> str:
    return f"{row['daemon_rss_mib']:.0f} MiB" if row["daemon_rss_mib"] is not None else ""


def _paths_text(row: dict) -> str:
    shares = row["path_shares"]
    if not shares:
        return "no READ/WRITE requests" if row["paths"] is not None else ""
    return " ".join(f"{tier} {share:.0%}" for tier, share in shares.items() if share)


def _rounds_text(row: dict) -> str:
    """Every round in order: its value, and its ratio to direct access in the same round."""
    ratios = row.get("ratios") or []
    unit = row["unit"]
    shown = []
    for i, value in enumerate(row["values"]):
        text = _seconds_text(value) if unit == "s" else f"{value:,.0f}"
        shown.append(f"{text} ({ratios[i]:.2f})" if i < len(ratios) else text)
    return ", ".join(shown) + ("" if unit == "s" else f" {unit}") + (" (vs direct)" if ratios else "")


def _request_lines(row: dict, shown_by_opcode: set[str]) -> list[str]:
    """zcfs rows of the workloads that count requests: the run's requests by opcode, the inodes held and
    their memory (fresh mounts), the expectation's verdict."""
    if row["workload"] not in shown_by_opcode or row.get("requests_by_opcode") is None:
        return []
    ops = row["requests_by_opcode"]
    lines = ["requests: " + (", ".join(f"{op} {n:,.0f}" for op, n in ops.items()) or "none")]
    if row.get("rss_per_inode_bytes") is not None:
        lines.append(f"inodes held {row['inodes']:,.0f}, daemon RSS grew {row['rss_per_inode_bytes']:,.0f} "
                     f"bytes per inode since mounting")
    if row.get("expectation"):
        verdict = row["expectation"]
        lines.append("expectation met" if verdict["met"] else f"EXPECTATION NOT MET: {verdict['unmet']}")
    return lines


def table(doc: dict) -> str:
    """The results as a text table, one block of rows per workload."""
    lines = [describe(doc)]
    if doc["read_ahead_note"]:
        lines.append(doc["read_ahead_note"])
    lines.append(f"cold reads: {doc['machine']['cold_cache']}")
    for config in doc["configurations"]:
        if config["error"]:
            lines.append(f"{config['name']}: not measured: {config['error']}")
    if doc.get("between_rounds"):
        lines.append(f"between rounds: {doc['between_rounds']}")
    if any(row.get("unsteady") for row in doc["results"]):
        lines.append(f"! marks a configuration whose rounds spread more than {UNSTEADY:g}x (every round shown)")
    versus = doc.get("versus")
    if versus:
        lines.append(f"vs {versus}: the speed relative to {versus} in the same round")
    versus_width = len(f"vs {versus}") + 2 if versus else 0
    header = f"{'workload':<20}{'configuration':<26}{'median':>16}{'spread':>8}{'vs direct':>15}" \
             f"{f'vs {versus}' if versus else '':>{versus_width}}{'daemon CPU':>15}{'RSS':>9}  paths"
    lines += ["", header, "-" * len(header)]
    previous = None
    shown_by_opcode = {w["name"] for w in doc["workloads"] if w.get("by_opcode")}
    for row in doc["results"]:
        if row["error"] and any(c["name"] == row["configuration"] and c["error"] for c in doc["configurations"]):
            continue  # said once above
        name = row["workload"] if row["workload"] != previous else ""
        previous = row["workload"]
        if row["value"] is None:
            lines.append(f"{name:<20}{row['configuration']:<26}  failed: {row['error']}")
            continue
        versus_text = f"{ratio_text(row.get('versus')):>{versus_width}}" if versus else ""
        lines.append(f"{name:<20}{row['configuration']:<26}{_value_text(row):>16}{_spread_text(row):>8}"
                     f"{ratio_text(row['ratio']):>15}{versus_text}{_cpu_text(row):>15}{_rss_text(row):>9}"
                     f"  {_paths_text(row)}".rstrip())
        if row.get("values") and len(row["values"]) > 1:
            lines.append(f"{'':<20}{'':<26}  {'!' if row.get('unsteady') else ' '} rounds: {_rounds_text(row)}")
        lines += [f"{'':<20}{'':<26}  {text}" for text in _request_lines(row, shown_by_opcode)]
    for workload in doc["workloads"]:
        if workload.get("expect"):
            lines.append(f"\n{workload['name']}: expected {workload['expect']}")
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> None:
    """Write a PNG: one panel per workload group, a bar per configuration, speed relative to direct."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c["name"] for c in doc["configurations"] if c["kind"] != "direct" and not c["error"]]
    groups: dict[str, list[str]] = {}
    for w in doc["workloads"]:
        groups.setdefault(w["group"], []).append(w["name"])
    ratio = {(r["workload"], r["configuration"]): r["ratio"] for r in doc["results"]}
    widths = [max(len(names), 1) for names in groups.values()]
    fig, axes = plt.subplots(1, len(groups), figsize=(2.2 + 1.3 * sum(widths), 4.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    colors = plt.get_cmap("tab10").colors
    bar = 0.8 / max(len(configs), 1)
    for ax, (group, names) in zip(axes[0], groups.items()):
        for k, config in enumerate(configs):
            xs = [i - 0.4 + bar * (k + 0.5) for i in range(len(names))]
            ys = [ratio.get((name, config)) or 0 for name in names]
            ax.bar(xs, ys, bar, color=colors[k % len(colors)], label=config)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(group)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("speed relative to direct access (1 = direct)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(configs), 6), fontsize=8, frameon=False)
    fig.suptitle(describe(doc), fontsize=8, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.92))
    fig.savefig(path, dpi=80)
    plt.close(fig)
