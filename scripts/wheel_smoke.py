"""The wheel is the whole product: build it as the bundle does, install it into a fresh
virtualenv outside the checkout, and run every bundle entry point from there against a
small lake and the local broker.

A Databricks job cluster gets the wheel and nothing else, so this checks what `make test`
cannot from a checkout: that every file a job reads at run time (code, pipelines/conf, the
quality suites, the schemas) is inside the wheel and found through the package, that the
wheel's declared dependencies are enough, and that a failing job exits non-zero.

    make wheel-smoke                                   # CI runs it after `make test`
    .venv/bin/python scripts/wheel_smoke.py --keep     # keep the work folder to look around

Needs the local broker (`make kafka-start`) and the Spark jars (`make jars`); the jars
stand in for what a Databricks runtime brings itself. Each run uses topics of its own.
Standard library only: it runs under the checkout's interpreter, the jobs under the new one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The bundle's artifact build (databricks.yml), so the smoke run tests what deploys.
BUILD = ["-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q"]
# The caller's environment must not leak a checkout, another Spark or a lake into the run.
SCRUBBED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SPARK_HOME", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")
SCRUBBED_PREFIXES = ("LAKEHOUSE_", "KAFKA_SECURITY", "KAFKA_SASL", "KAFKA_SSL", "DATABRICKS_")
# What the run leaves in the lake: each table must exist with at least one row.
EXPECTED_TABLES = ("bronze/events", "silver/usage_events", "silver/account_events", "gold/daily_usage",
                   "gold/period_usage", "gold/invoice_lines", "gold/billing_exports", "ops/quality_results")

# Run by the installed interpreter: the package, its conf, suites and schemas all come from
# the new virtualenv, and they load.
INSTALLED_CHECK = """
import sys
from pathlib import Path
import pipelines
from pipelines.core.config import CONF_DIR
from pipelines.core.contract import load_contract, schemas_dir
from pipelines.quality.suites import QUALITY_DIR, load_suites
from pipelines.core.tables import table_specs

prefix = Path(sys.prefix).resolve()
for where in (Path(pipelines.__file__), CONF_DIR, QUALITY_DIR, schemas_dir()):
    assert prefix in where.resolve().parents, f"{where} is not inside {prefix}"
checks = load_suites()
print(f"installed package {Path(pipelines.__file__).parent}: {len(checks)} quality checks in suites "
      f"{sorted({c.suite for c in checks})}, {len(table_specs())} table specs, event contract v{load_contract().version}")
"""

# Every bundle entry point, in the order the schedule runs them (resources/*.yml), called
# as python_wheel_task calls it: the function the installed wheel's console_scripts entry
# names, parameters in sys.argv, return value ignored, so only a raise fails the run. One
# process for all, as one JVM: starting Spark for each job costs more than the jobs here.
ENTRY_POINT_RUNS = [["lakehouse-ingest"], ["lakehouse-notify"], ["lakehouse-billing"], ["lakehouse-views"],
                    ["lakehouse-export"], ["lakehouse-plan-rules"], ["lakehouse-quality"], ["lakehouse-fraud"]]
CALL_ENTRY_POINTS = """
import json, sys, time
from importlib.metadata import entry_points

for script, *params in json.loads(sys.argv[1]):
    (entry,) = entry_points(group="console_scripts", name=script)
    sys.argv = [script, *params]
    started = time.monotonic()
    print(f"wheel-smoke: {entry.value}({' '.join(params)})", flush=True)
    entry.load()()
    print(f"wheel-smoke: {script} passed in {time.monotonic() - started:.0f} s", flush=True)
"""

# Row counts through delta-rs (a dependency of the wheel): no JVM needed to look.
COUNT_ROWS = """
import json, sys
from deltalake import DeltaTable
print(json.dumps({t: DeltaTable(f"{sys.argv[1]}/{t}").to_pyarrow_dataset().count_rows() for t in sys.argv[2:]}))
"""


def say(msg: str) -> None:
    print(f"wheel-smoke: {msg}", flush=True)


def expected_files() -> set[str]:
    """The package as committed (schemas/ and quality/ are symlinks into it)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "pipelines"], check=True,
                            capture_output=True, text=True).stdout.split()
    return set(listed)


def check_wheel(wheel: Path) -> None:
    names = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    if missing := sorted(expected_files() - names):
        raise SystemExit(f"wheel-smoke: {wheel.name} lacks {len(missing)} file(s) of the package: {missing}")
    # Production only: the development tools (devtools/), benches and tests stay out.
    if stray := sorted(n for n in names if not n.startswith("pipelines/")):
        raise SystemExit(f"wheel-smoke: {wheel.name} holds {len(stray)} file(s) outside the package: {stray}")
    data = sorted(n for n in names if not n.endswith(".py"))
    say(f"{wheel.name}: {len(names)} files, every committed file of the package; data files: {', '.join(data)}")


def previous_month_start(now: datetime) -> datetime:
    """Events in last month, so billing closes a period and the export has lines to send."""
    return (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)).replace(day=1)


def job_env(venv: Path, work: Path, bootstrap: str) -> dict[str, str]:
    jars = os.environ.get("LAKEHOUSE_SPARK_JARS") or str(ROOT / "jvm" / "target" / "spark-jars")
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED and not k.startswith(SCRUBBED_PREFIXES)}
    run_id = uuid.uuid4().hex[:8]
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "LAKEHOUSE_ROOT": str(work / "lake"),
        "LAKEHOUSE_LOCAL_DIR": str(work / "local"),
        "LAKEHOUSE_SPARK_JARS": jars,
        "LAKEHOUSE_EVENTS_TOPIC": f"smoke.{run_id}.events",
        "LAKEHOUSE_NOTIFICATIONS_TOPIC": f"smoke.{run_id}.notifications",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    })
    return env


def run_arguments(doc: str, *, work_help: str, keep_help: str) -> argparse.ArgumentParser:
    """The options every run outside the checkout takes (this script, cluster_check.py)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, help=f"folder for {work_help} "
                                                 "(default: a new temporary folder; must be outside the checkout)")
    p.add_argument("--keep", action="store_true", help=keep_help)
    p.add_argument("--events", type=int, default=200, help="records to produce (default 200)")
    p.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    return p


def work_folder(p: argparse.ArgumentParser, given: Path | None, prefix: str) -> Path:
    """--work-dir or a new temporary folder, refused inside the checkout: the point of the
    run is that nothing of the checkout is on its path."""
    work = (given or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    if work == ROOT or ROOT in work.parents:
        p.error(f"--work-dir {work} is inside the checkout; the point is to run without it")
    work.mkdir(parents=True, exist_ok=True)
    return work


def main(argv: list[str] | None = None) -> int:
    p = run_arguments(__doc__, work_help="the wheel, virtualenv and lake, kept afterwards",
                      keep_help="keep the temporary folder (it is always kept on failure)")
    args = p.parse_args(argv)
    work = work_folder(p, args.work_dir, "lakehouse-wheel-smoke-")
    venv, rundir = work / "venv", work / "run"
    rundir.mkdir(exist_ok=True)
    steps: list[tuple[str, float]] = []

    def step(name: str, cmd: list, *, expect: int = 0, **kwargs) -> subprocess.CompletedProcess:
        shown = [str(c) if "\n" not in str(c) else "<script>" for c in cmd]
        say(f"{name}: {' '.join(shown)}")
        started = time.monotonic()
        done = subprocess.run([str(c) for c in cmd], **kwargs)
        steps.append((name, time.monotonic() - started))
        if done.returncode != expect:
            raise SystemExit(f"wheel-smoke: {name} exited {done.returncode}, expected {expect} (work folder {work})")
        return done

    started = time.monotonic()
    step("build wheel", [sys.executable, *BUILD, "--wheel-dir", work / "dist", ROOT])
    (wheel,) = (work / "dist").glob("billing_lakehouse-*.whl")
    check_wheel(wheel)

    uv = VENV_BIN / "uv"
    step("virtualenv", [uv, "venv", "-q", "--python", sys.executable, venv])
    # The wheel's own dependencies and its `local` extra (Spark, Delta), at the versions the
    # lock pins: a dependency missing from pyproject.toml fails here, not on a cluster.
    step("install", [uv, "pip", "install", "-q", "--python", venv / "bin" / "python",
                     f"{wheel}[local]", "--constraint", ROOT / "requirements.lock"])
    env = job_env(venv, work, args.bootstrap_servers)
    bin_ = venv / "bin"
    step("installed package", [bin_ / "python", "-c", INSTALLED_CHECK], cwd=rundir, env=env)

    # The events come from the development producer, which is not in the wheel: it runs
    # from the checkout's source under the checkout's interpreter. Only the jobs must not.
    dev_env = {**env, "PYTHONPATH": str(ROOT)}
    step("produce (devtools, from the checkout)",
         [sys.executable, "-m", "devtools", "produce", "--count", args.events, "--accounts", "6", "--seed", "21",
          "--start", previous_month_start(datetime.now(UTC)).isoformat()], cwd=rundir, env=dev_env)
    step("entry points", [bin_ / "python", "-c", CALL_ENTRY_POINTS, json.dumps(ENTRY_POINT_RUNS)],
         cwd=rundir, env=env)
    # A failure fails through the installed console script too.
    step("lakehouse-export refusing a bad period", [bin_ / "lakehouse-export", "--period", "last-month"],
         expect=2, cwd=rundir, env=env)

    counted = step("row counts", [bin_ / "python", "-c", COUNT_ROWS, work / "lake", *EXPECTED_TABLES],
                   cwd=rundir, env=env, capture_output=True, text=True)
    counts = json.loads(counted.stdout)
    say("rows: " + ", ".join(f"{t.replace('/', '.')} {n}" for t, n in counts.items()))
    exported = sorted(str(f.relative_to(work / "lake")) for f in (work / "lake" / "exports").glob("*/*"))
    say(f"export files: {', '.join(exported) or 'none'}")
    if empty := [t for t, n in counts.items() if n == 0]:
        raise SystemExit(f"wheel-smoke: empty after the run: {empty} (work folder {work})")
    if not exported:
        raise SystemExit(f"wheel-smoke: the export wrote no file (work folder {work})")

    say("timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in steps))
    say(f"passed in {time.monotonic() - started:.0f} s")
    if args.keep or args.work_dir:
        say(f"work folder kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
