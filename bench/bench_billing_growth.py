"""Billing close time as events and accounts grow in 10x steps (the growth curve).

    .venv/bin/python bench/bench_billing_growth.py                        # 10k/100, 100k/1k, 1M/10k
    .venv/bin/python bench/bench_billing_growth.py --steps 3 --base-events 2000 --base-accounts 20

Each step is one run of bench/bench_billing.py (its own process and SparkSession, same
seed and months), `--base-events`/`--base-accounts` times 10^i; this collects the close,
rerun and export seconds from each run's summary.json and reports how they grow per 10x
step (the exponent k in time ~ size^k: 1.0 is linear).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import command_line, positive_int, say, write_outputs  # noqa: E402

STAGES = {"close": "billing close", "rerun": "billing rerun", "export": "export (run_export"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=3)
    p.add_argument("--base-events", type=positive_int, default=10_000)
    p.add_argument("--base-accounts", type=positive_int, default=100)
    p.add_argument("--months", type=positive_int, default=3)
    args = p.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = ROOT / "bench" / "out" / f"billing-growth-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.steps):
        events, accounts = args.base_events * 10**i, args.base_accounts * 10**i
        out = run_dir / f"step{i}"
        say(f"step {i + 1}/{args.steps}: {events:,} events, {accounts:,} accounts")
        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_billing.py"), "--events", str(events),
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
    write_outputs(run_dir, {"command": command_line(), "steps": rows}, markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
