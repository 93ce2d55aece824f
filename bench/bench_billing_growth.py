"""Billing close time as events and accounts grow in 10x steps (the growth curve).

    .venv/bin/python -m bench.bench_billing_growth                        # 10k/100, 100k/1k, 1M/10k
    .venv/bin/python -m bench.bench_billing_growth --steps 3 --base-events 2000 --base-accounts 20
    .venv/bin/python -m bench.bench_billing_growth --replot bench/out/billing-growth-<stamp>

Each step is one run of bench/bench_billing.py (its own process and SparkSession, same
seed and months), `--base-events`/`--base-accounts` times 10^i; this collects the close,
rerun and export seconds from each run's summary.json and reports how they grow per 10x
step (the exponent k in time ~ size^k: 1.0 is linear), and draws growth.png: each stage's
time against the events on log-log axes, next to a line of slope 1, so a stage growing
linearly shows as parallel to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.bench_common import command_line, positive_int, say, write_outputs

ROOT = Path(__file__).resolve().parent.parent

STAGES = {"close": "billing close", "rerun": "billing rerun", "export": "export (run_export"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=3)
    p.add_argument("--base-events", type=positive_int, default=10_000)
    p.add_argument("--base-accounts", type=positive_int, default=100)
    p.add_argument("--months", type=positive_int, default=3)
    p.add_argument("--replot", type=Path, metavar="RUN_DIR",
                   help="only redraw growth.png from an earlier run's summary.json")
    args = p.parse_args(argv)
    if args.replot:
        rows = json.loads((args.replot / "summary.json").read_text())["steps"]
        plot_growth(rows, args.replot / "growth.png")
        say(f"wrote {args.replot / 'growth.png'}")
        return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = ROOT / "bench" / "out" / f"billing-growth-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.steps):
        events, accounts = args.base_events * 10**i, args.base_accounts * 10**i
        out = run_dir / f"step{i}"
        say(f"step {i + 1}/{args.steps}: {events:,} events, {accounts:,} accounts")
        subprocess.run([sys.executable, "-m", "bench.bench_billing", "--events", str(events),
                        "--accounts", str(accounts), "--months", str(args.months), "--out", str(out)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads(next(out.glob("billing-*/summary.json")).read_text())
        seconds = {k: next(s["seconds"] for s in summary["stages"] if s["name"].startswith(prefix))
                   for k, prefix in STAGES.items()}
        rows.append({"events": events, "accounts": accounts, **{k: round(v, 1) for k, v in seconds.items()},
                     "load": [round(x, 2) for x in os.getloadavg()]})
    for prev, cur in zip(rows, rows[1:]):
        for k in STAGES:
            cur[f"{k}_exponent"] = round(math.log10(cur[k] / prev[k]), 2) if prev[k] > 0 else None
    table = "\n".join(
        ["| events | accounts | close s | rerun s | export s | close growth k | load after |", "|---|---|---|---|---|---|---|"]
        + [f"| {r['events']:,} | {r['accounts']:,} | {r['close']} | {r['rerun']} | {r['export']} | "
           f"{r.get('close_exponent', '-')} | {' '.join(map(str, r['load']))} |" for r in rows])
    markdown = "\n".join([f"### Billing close growth curve, {stamp}", "",
                          f"Command: `{command_line()}`; {os.cpu_count()} cores; each step a separate "
                          "bench/bench_billing.py process. k = log10(time ratio) per 10x step (1.0 = linear).",
                          "", table])
    plot_growth(rows, run_dir / "growth.png")
    write_outputs(run_dir, {"command": command_line(), "steps": rows}, markdown, table)
    return 0


def plot_growth(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [r["events"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for stage, colour in zip(STAGES, ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(events, [r[stage] for r in rows], "o-", color=colour, label=f"{stage} (s)")
    # Slope 1 through the first close: what the close would cost if it grew with the data.
    ax.plot(events, [rows[0]["close"] * e / events[0] for e in events], ":", color="tab:gray",
            label="linear growth from the first close")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(events, [f"{e:,}\n{r['accounts']:,} accounts" for e, r in zip(events, rows)])
    ax.set_xlabel("usage events (and accounts), 10x per step")
    ax.set_ylabel("wall time (s, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title("Billing close, rerun and export time as the data grows")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
