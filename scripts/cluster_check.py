"""A real multi-executor run: the pipeline on a Spark standalone cluster (a master and two
workers, each its own JVM, on 127.0.0.1) gives the same tables as on `local[*]`.

Every test runs Spark as `local[*]`, where the driver and the executors share one JVM and one
Python process tree, so anything that works only because of that (a closure over driver
state, a relative or driver-only path, a Python object captured in a function, a jar only the
driver has) would first fail on a cluster. This runs the product as a cluster gets it: the
wheel, built as the bundle builds it and installed into a fresh virtualenv outside the
checkout (scripts/wheel_smoke.py), whose pyspark is also the Spark distribution the master and
workers are started from. One event set goes to a topic of its own on the local broker;
the entry points `lakehouse-ingest` (bronze, silver, gold), `lakehouse-billing` and
`lakehouse-export` run over it twice, side by side, each into its own lake: with
LAKEHOUSE_SPARK_MASTER=local[*] and with spark://127.0.0.1:<port>; then every Delta table
and export file of the two lakes is compared row for row. The check also proves the cluster run used two
executors (Spark's event log: every task ran on an executor, none on the driver, and both
executors ran tasks; each worker launched an executor for the app; a probe job whose Python
workers import the package from the virtualenv on both executors), so it cannot pass on
local mode by accident.

    make cluster-check                                  # CI runs it after `make wheel-smoke`
    .venv/bin/python scripts/cluster_check.py --keep    # keep the work folder (lakes, logs)

Needs the local broker (`make kafka-start`) and the Spark jars (`make jars`). Exits non-zero
on any failure, printing the cluster's and the drivers' logs; the cluster is stopped whatever
happens. Runs under the checkout's interpreter (it reads the lakes with its delta-rs), the
jobs under the new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheel_smoke  # noqa: E402  (the wheel build and install, and the jobs' environment)

ROOT = wheel_smoke.ROOT
WORKERS = 2
WORKER_CORES = 1
WORKER_MEMORY = "2g"
# Each run is a few minutes; far beyond that something hangs (a lost executor, a stuck stream).
RUN_TIMEOUT_S = 20 * 60
REGISTER_TIMEOUT_S = 120

# The platform's way of calling the jobs (wheel_smoke.CALL_ENTRY_POINTS): the function the
# installed console script names, parameters in sys.argv, in one process (one session, one
# Spark application). Then, on a cluster, a probe job on every core: which executor ran it
# and where its Python worker imported the package from. The result goes to argv[1].
DRIVER = """
import json, sys, time
from importlib.metadata import entry_points
from pyspark.sql import SparkSession

out, scripts = sys.argv[1], sys.argv[2:]
timings = {}
for script in scripts:
    (entry,) = entry_points(group="console_scripts", name=script)
    sys.argv = [script]
    started = time.monotonic()
    print(f"cluster-check: {entry.value}()", flush=True)
    entry.load()()
    timings[script] = round(time.monotonic() - started, 1)

sc = SparkSession.builder.getOrCreate().sparkContext

def where(_):
    import os, re, sys
    import pipelines
    # A standalone executor tells its Python workers its log URL, which names the executor.
    found = re.search(r"executorId=([^&]+)", os.environ.get("SPARK_LOG_URL_STDERR", ""))
    yield {"executor": found.group(1) if found else "driver", "pid": os.getpid(),
           "python": sys.executable, "pipelines": pipelines.__file__}

probe = sc.parallelize(range(4 * sc.defaultParallelism), 4 * sc.defaultParallelism).mapPartitions(where).collect()
result = {"master": sc.master, "app_id": sc.applicationId, "timings": timings, "probe": probe}
sc.stop()
with open(out, "w") as f:
    json.dump(result, f)
"""
ENTRY_POINTS = ("lakehouse-ingest", "lakehouse-billing", "lakehouse-export")

# Comparing the two lakes. What may differ between two runs over the same records is only
# what the clock or the run itself stamps: when bronze wrote a record (`ingested_at`, carried
# into silver's coordinates and gold's freshness column), when billing computed a row, when
# the export staged and delivered its lines, and a stream's query id. Everything else is a
# function of the input and is compared, row for row. `is_late` is compared too: it reads
# `ingested_at`, but the events are weeks old on arrival, so both runs flag the same ones.
# The export ledger names its files by absolute path, which holds the lake's own folder:
# compared relative to the lake. ops.stream_metrics is not compared at all: it is the runs'
# timings, rates and ids, one row per micro-batch, the record of the run rather than of data.
VOLATILE = {
    "bronze/events": {"ingested_at"},
    "silver/usage_events": {"ingested_at"},
    "silver/account_events": {"ingested_at"},
    "silver/duplicates": {"ingested_at"},
    "silver/quarantine": {"ingested_at"},
    "gold/daily_usage": {"last_ingested_at"},
    "gold/period_usage": {"computed_at"},
    "gold/invoice_lines": {"computed_at"},
    "gold/billing_exports": {"staged_at", "delivered_at"},
    "ops/silver_batches": {"query_id", "processed_at"},
}
LAKE_RELATIVE = {"gold/billing_exports": ("provider_file", "finance_file")}
NOT_COMPARED = {"ops/stream_metrics": "timings, rates and run ids of each micro-batch"}
# A comparison of empty tables would prove nothing: these must have rows.
MUST_HAVE_ROWS = ("bronze/events", "silver/usage_events", "silver/account_events", "gold/daily_usage",
                  "gold/period_usage", "gold/invoice_lines", "gold/billing_exports")


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"cluster-check: {msg}", flush=True)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    ({exc})"
    return "\n".join(f"    {line}" for line in text[-lines:])


# ---------------------------------------------------------------- the standalone cluster


@dataclass
class Cluster:
    """A master and WORKERS workers from a Spark distribution, each its own JVM and process
    group (so stopping one takes its executors and their Python workers with it). Ports are
    chosen by the JVMs (port 0) and read back from the master's log: nothing to collide with
    another run on the same machine."""

    spark_home: Path
    folder: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    url: str = ""
    webui: str = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in wheel_smoke.SCRUBBED
               and not k.startswith(("SPARK_", "LAKEHOUSE_"))}
        env.update({
            "SPARK_HOME": str(self.spark_home),
            "SPARK_CONF_DIR": str(self.folder / "conf"),   # empty: no stray spark-defaults
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(self.folder / "tmp"),  # executors' shuffle and block files
            "SPARK_DAEMON_MEMORY": "512m",                 # the master and worker JVMs themselves
        })
        return env

    def _start(self, name: str, *args: str) -> None:
        log = open(self.folder / "logs" / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [str(self.spark_home / "bin" / "spark-class"), *args], env=self.env(), cwd=self.folder,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        for sub in ("conf", "tmp", "logs", "events"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        # The master's REST submission server would take port 6066 (fixed): not needed here.
        (self.folder / "master.properties").write_text("spark.master.rest.enabled false\n")
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0",
                    "--webui-port", "0", "--properties-file", str(self.folder / "master.properties"))
        log = self.folder / "logs" / "master.log"
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while not (self.url and self.webui):
            self._alive_or_fail(deadline, "the master to start")
            text = log.read_text(errors="replace")
            if found := re.search(r"Starting Spark master at (spark://\S+)", text):
                self.url = found.group(1)
            if found := re.search(r"MasterWebUI to \S+ and started at http://[^:/]+:(\d+)", text):
                self.webui = f"http://127.0.0.1:{found.group(1)}"
            time.sleep(0.5)
        for i in range(1, WORKERS + 1):
            work = self.folder / f"worker{i}"
            work.mkdir(exist_ok=True)
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                        "--port", "0", "--webui-port", "0", "--cores", str(WORKER_CORES),
                        "--memory", WORKER_MEMORY, "--work-dir", str(work), self.url)

    def wait_for_workers(self) -> list[dict]:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            self._alive_or_fail(deadline, f"{WORKERS} workers to register")
            alive = [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]
            if len(alive) >= WORKERS:
                return alive
            time.sleep(0.5)

    def state(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as r:
                return json.load(r)
        except OSError:
            return {}

    def _alive_or_fail(self, deadline: float, waiting_for: str) -> None:
        if dead := {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}:
            raise CheckFailed(f"cluster process(es) exited while waiting for {waiting_for}: {dead}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {REGISTER_TIMEOUT_S} s waiting for {waiting_for}")

    def stop(self) -> None:
        # Workers first, so the master does not log them as lost; each group holds a JVM's
        # executors and their Python workers too.
        for name in sorted(self.procs, reverse=True):
            _stop_group(self.procs[name])

    @property
    def events(self) -> Path:
        """Where the driver of a cluster run writes its Spark event log."""
        return self.folder / "events"

    def logs(self) -> list[Path]:
        executors = sorted(self.folder.glob("worker*/app-*/*/stderr"))
        return sorted((self.folder / "logs").glob("*.log")) + executors


def _stop_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Driver:
    """One driver process running the entry points, output to `log`, result to `result`."""

    name: str
    log: Path
    result: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0

    def start(self, python: Path, env: dict[str, str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(python), "-c", DRIVER, str(self.result), *ENTRY_POINTS], env=env,
                                         cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.started = time.monotonic()


def wait_for_drivers(drivers: list[Driver]) -> dict[str, dict]:
    """Until every driver has exited; the first failure (or the timeout) fails the check,
    and the caller stops the others."""
    running = list(drivers)
    while running:
        for d in list(running):
            code = d.proc.poll()
            if code is None:
                if time.monotonic() - d.started > RUN_TIMEOUT_S:
                    raise CheckFailed(f"the {d.name} driver ran over {RUN_TIMEOUT_S} s (log {d.log})")
                continue
            if code != 0:
                raise CheckFailed(f"the {d.name} driver exited {code} (log {d.log})")
            d.seconds = time.monotonic() - d.started
            say(f"{d.name} run done in {d.seconds:.0f} s")
            running.remove(d)
        time.sleep(1)
    return {d.name: json.loads(d.result.read_text()) for d in drivers}


# ---------------------------------------------------------------- proof of two executors


def executor_tasks(events_dir: Path, app_id: str) -> tuple[Counter, dict[str, str], str]:
    """Tasks per executor id, executors added (id -> host), and the master, from the app's
    Spark event log (one JSON event a line; Spark 4 writes it as a rolling folder)."""
    files = sorted(events_dir.glob(f"*{app_id}*/events_*")) or sorted(events_dir.glob(f"*{app_id}*"))
    if not files:
        raise CheckFailed(f"no Spark event log for {app_id} in {events_dir}")
    tasks: Counter = Counter()
    added: dict[str, str] = {}
    master = ""
    for path in files:
        with open(path, errors="replace") as f:
            for line in f:
                event = json.loads(line)
                kind = event.get("Event")
                if kind == "SparkListenerTaskEnd":
                    tasks[event["Task Info"]["Executor ID"]] += 1
                elif kind == "SparkListenerExecutorAdded":
                    added[event["Executor ID"]] = event["Executor Info"]["Host"]
                elif kind == "SparkListenerEnvironmentUpdate":
                    master = event.get("Spark Properties", {}).get("spark.master", master)
    return tasks, added, master


def workers_running(workers: list[dict], app_id: str) -> dict[str, list[str]]:
    """Worker id -> the executor ids it launched for the app (each worker's JSON UI)."""
    seen = {}
    for w in workers:
        try:
            with urllib.request.urlopen(f"{w['webuiaddress']}/json/", timeout=5) as r:
                state = json.load(r)
        except OSError as exc:
            raise CheckFailed(f"worker {w['id']} UI did not answer: {exc}")
        seen[w["id"]] = sorted(str(e.get("id")) for e in state.get("executors", []) + state.get("finishedexecutors", [])
                               if e.get("appid") == app_id)
    return seen


# ---------------------------------------------------------------- comparing the two lakes


def delta_tables(lake: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(lake)) for p in lake.glob("*/*/_delta_log")
                  if not p.parent.parent.name.startswith("_"))


def _norm(value, kind):
    """A cell as a comparable, hashable value (maps in key order, whatever order Spark wrote)."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_map(kind):
        return tuple(sorted((_norm(k, kind.key_type), _norm(v, kind.item_type)) for k, v in value))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return tuple(_norm(v, kind.value_type) for v in value)
    if pa.types.is_struct(kind):
        return tuple((kind.field(i).name, _norm(value[kind.field(i).name], kind.field(i).type))
                     for i in range(kind.num_fields))
    if isinstance(value, Decimal):
        return value.normalize()
    return value


@dataclass
class TableResult:
    table: str
    local_rows: int
    cluster_rows: int
    equal: bool
    note: str = ""
    skipped: bool = False


def compare_table(table: str, local_lake: Path, cluster_lake: Path) -> TableResult:
    from deltalake import DeltaTable

    skip = VOLATILE.get(table, set())
    per_lake = []
    for lake in (local_lake, cluster_lake):
        data = DeltaTable(str(lake / table)).to_pyarrow_table()
        columns = [f for f in data.schema if f.name not in skip]
        rows = Counter()
        for record in data.select([f.name for f in columns]).to_pylist():
            for col in LAKE_RELATIVE.get(table, ()):
                if record[col] is not None:
                    record[col] = str(Path(record[col]).relative_to(lake))
            rows[tuple((f.name, _norm(record[f.name], f.type)) for f in columns)] += 1
        per_lake.append((rows, [f.name for f in columns]))
    (local, local_cols), (cluster, cluster_cols) = per_lake
    n_local, n_cluster = sum(local.values()), sum(cluster.values())
    if local_cols != cluster_cols:
        return TableResult(table, n_local, n_cluster, False, f"columns differ: {local_cols} vs {cluster_cols}")
    if local != cluster:
        only_local, only_cluster = local - cluster, cluster - local
        sample = [f"only local: {dict(r)}" for r in list(only_local)[:2]] + \
                 [f"only cluster: {dict(r)}" for r in list(only_cluster)[:2]]
        return TableResult(table, n_local, n_cluster, False,
                           f"{sum(only_local.values())} row(s) only local, {sum(only_cluster.values())} only "
                           f"on the cluster; e.g.\n      " + "\n      ".join(sample))
    ignored = sorted(skip) + [f"{c} (relative)" for c in LAKE_RELATIVE.get(table, ())]
    return TableResult(table, n_local, n_cluster, True, f"not compared: {', '.join(ignored)}" if ignored else "")


def compare_exports(local_lake: Path, cluster_lake: Path) -> TableResult:
    """Export files byte for byte (the export id is a digest of the lines, so the names match)."""
    def files(lake: Path) -> dict[str, str]:
        return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((lake / "exports").rglob("*")) if p.is_file()}

    local, cluster = files(local_lake), files(cluster_lake)
    equal = local == cluster and bool(local)
    note = ", ".join(local) if equal else f"local {local} vs cluster {cluster}"
    return TableResult("exports/ (files)", len(local), len(cluster), equal, note)


def compare_lakes(local_lake: Path, cluster_lake: Path) -> list[TableResult]:
    local_tables, cluster_tables = delta_tables(local_lake), delta_tables(cluster_lake)
    results = []
    for table in sorted(set(local_tables) | set(cluster_tables)):
        if table in NOT_COMPARED:
            results.append(TableResult(table, -1, -1, True, NOT_COMPARED[table], skipped=True))
        elif table not in local_tables or table not in cluster_tables:
            results.append(TableResult(table, -1, -1, False,
                                       f"only in the {'local' if table in local_tables else 'cluster'} lake"))
        else:
            results.append(compare_table(table, local_lake, cluster_lake))
    results.append(compare_exports(local_lake, cluster_lake))
    for r in results:
        if r.table in MUST_HAVE_ROWS and r.equal and r.local_rows == 0:
            r.equal, r.note = False, "empty in both lakes: nothing was compared"
    if missing := [t for t in MUST_HAVE_ROWS if t not in local_tables]:
        results.append(TableResult(", ".join(missing), -1, -1, False, "not written by the local run"))
    return results


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = wheel_smoke.run_arguments(
        __doc__, work_help="the wheel, virtualenv, lakes and logs, kept",
        keep_help="keep the temporary folder (on failure it is always kept, without its virtualenv)")
    args = p.parse_args(argv)
    work = wheel_smoke.work_folder(p, args.work_dir, "lakehouse-cluster-check-")
    # A rerun in the same folder starts from nothing (a lake's checkpoints would otherwise
    # make the runs resume rather than compare); only the virtualenv is kept, and updated.
    for stale in ("dist", "spark", "local", "cluster", "produce.log"):
        path = work / stale
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # `make` or CI stopping the check must still stop the cluster: turn signals into an exit
    # that runs the `finally` below.
    def _exit(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)

    started, month = time.monotonic(), datetime.now(UTC).strftime("%Y-%m")
    timings: list[tuple[str, float]] = []
    cluster: Cluster | None = None
    logs: list[Path] = []
    try:
        def step(name: str, cmd: list, **kwargs) -> None:
            t = time.monotonic()
            say(f"{name}")
            done = subprocess.run([str(c) for c in cmd], **kwargs)
            timings.append((name, time.monotonic() - t))
            if done.returncode:
                raise CheckFailed(f"{name} exited {done.returncode}")

        # The wheel into a fresh virtualenv, exactly as `make wheel-smoke` installs it.
        venv = work / "venv"
        step("build wheel", [sys.executable, *wheel_smoke.BUILD, "--wheel-dir", work / "dist", ROOT])
        (wheel,) = (work / "dist").glob("billing_lakehouse-*.whl")
        uv = wheel_smoke.VENV_BIN / "uv"
        step("virtualenv", [uv, "venv", "-q", "--allow-existing", "--python", sys.executable, venv])
        # The wheel's version does not change with the code: reinstall it whatever is there.
        step("install wheel", [uv, "pip", "install", "-q", "--python", venv / "bin" / "python",
                               f"{wheel}[local]", "--reinstall-package", "billing-lakehouse",
                               "--constraint", ROOT / "requirements.lock"])
        python = venv / "bin" / "python"
        spark_home = Path(subprocess.run([python, "-c", "import os, pyspark; print(os.path.dirname(pyspark.__file__))"],
                                         check=True, capture_output=True, text=True).stdout.strip())

        # The cluster's JVMs start while the events are produced and the local run starts.
        cluster, cluster_started = Cluster(spark_home, work / "spark"), time.monotonic()
        cluster.start()
        logs.append(cluster.folder / "logs" / "master.log")

        # Topics of this run's own; no Spark setting of the caller's leaks into either run.
        env = {k: v for k, v in wheel_smoke.job_env(venv, work, args.bootstrap_servers).items()
               if not k.startswith("SPARK_")}
        produced = work / "produce.log"
        logs.append(produced)
        with open(produced, "wb") as out:
            # The development producer is not in the wheel: it runs from the checkout's source
            # under the checkout's interpreter, as in wheel_smoke. Only the jobs must not.
            step("produce (devtools, from the checkout)",
                 [sys.executable, "-m", "devtools", "produce", "--count", args.events, "--accounts", "6",
                  "--seed", "21", "--start", wheel_smoke.previous_month_start(datetime.now(UTC)).isoformat()],
                 cwd=work, env={**env, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT)

        # The two runs go on side by side: each is mostly one driver thread planning small
        # jobs, so on two cores together they take little more than the slower one alone.
        drivers = {name: Driver(name, work / name / "driver.log", work / name / "result.json")
                   for name in ("local", "cluster")}
        logs += [d.log for d in drivers.values()]
        started_runs = time.monotonic()
        local_env = {**env, "LAKEHOUSE_ROOT": str(work / "local" / "lake"), "LAKEHOUSE_SPARK_MASTER": "local[*]"}
        say(f"local run (local[*]): {', '.join(ENTRY_POINTS)}; log {drivers['local'].log}")
        drivers["local"].start(python, local_env, work / "local" / "run")

        workers = cluster.wait_for_workers()
        timings.append(("cluster up", time.monotonic() - cluster_started))
        say(f"cluster up: master {cluster.url} (UI {cluster.webui}), workers "
            + ", ".join(f"{w['id']} ({w['cores']} core, {w['memory']} MiB)" for w in workers))
        # Executor size and the event log the executor proof reads, the Spark way: a
        # spark-defaults.conf (the session sets neither). All on the loopback address.
        conf = cluster.folder / "driver-conf"
        conf.mkdir(exist_ok=True)
        (conf / "spark-defaults.conf").write_text(
            f"spark.executor.memory {WORKER_MEMORY}\n"
            f"spark.eventLog.enabled true\nspark.eventLog.dir {cluster.events.as_uri()}\n"
            "spark.eventLog.compress false\n")
        cluster_env = {**env, "LAKEHOUSE_ROOT": str(work / "cluster" / "lake"), "LAKEHOUSE_SPARK_MASTER": cluster.url,
                       "SPARK_CONF_DIR": str(conf), "SPARK_LOCAL_IP": "127.0.0.1"}
        say(f"cluster run ({cluster.url}): {', '.join(ENTRY_POINTS)}; log {drivers['cluster'].log}")
        drivers["cluster"].start(python, cluster_env, work / "cluster" / "run")
        try:
            runs = wait_for_drivers(list(drivers.values()))
        finally:
            for d in drivers.values():
                if d.proc is not None:
                    _stop_group(d.proc)
        timings += [(f"{name} run", d.seconds) for name, d in drivers.items()]
        timings.append(("both runs", time.monotonic() - started_runs))
        logs += cluster.logs()

        # The cluster run really ran on two executors, and the local one on none.
        result = runs["cluster"]
        tasks, added, master = executor_tasks(cluster.events, result["app_id"])
        per_worker = workers_running(workers, result["app_id"])
        probe = Counter(r["executor"] for r in result["probe"])
        imported = sorted({r["pipelines"] for r in result["probe"]})
        venv_site = (venv / "lib").resolve()
        problems = []
        if runs["local"]["master"] != "local[*]" or any(r["executor"] != "driver" for r in runs["local"]["probe"]):
            problems.append(f"the local run was not local: {runs['local']['master']}")
        if not master.startswith("spark://") or result["master"] != cluster.url:
            problems.append(f"the cluster run's master is {result['master']!r} / {master!r}, not {cluster.url}")
        if "driver" in tasks:
            problems.append(f"{tasks['driver']} task(s) ran in the driver")
        if len([e for e, n in tasks.items() if n and e != "driver"]) < WORKERS:
            problems.append(f"tasks ran on {len(tasks)} executor(s), not {WORKERS}: {dict(tasks)}")
        if len([w for w, ex in per_worker.items() if ex]) < WORKERS:
            problems.append(f"not every worker launched an executor for {result['app_id']}: {per_worker}")
        if len(probe) < WORKERS or "driver" in probe:
            problems.append(f"the probe's Python workers ran on {dict(probe)}")
        if not all(venv_site in Path(f).resolve().parents for f in imported):
            problems.append(f"executors imported the package from {imported}, not from {venv_site}")

        t = time.monotonic()
        results = compare_lakes(work / "local" / "lake", work / "cluster" / "lake")
        timings.append(("compare", time.monotonic() - t))

        print(flush=True)
        say(f"cluster run: application {result['app_id']} on {result['master']}")
        say("  tasks per executor (event log, the whole application): " + ", ".join(
            f"executor {e} on {added.get(e, '?')}: {n}" for e, n in sorted(tasks.items())))
        say("  executors per worker (worker UIs): " + ", ".join(f"{w}: {ex}" for w, ex in per_worker.items()))
        say(f"  probe: {len(result['probe'])} Python tasks on executors {dict(sorted(probe.items()))}, "
            f"package from {', '.join(imported)}")
        say("  job times, local vs cluster: " + ", ".join(
            f"{s} {runs['local']['timings'][s]:.0f} s / {runs['cluster']['timings'][s]:.0f} s" for s in ENTRY_POINTS))
        say("tables, local[*] vs cluster:")
        width = max(len(r.table) for r in results)
        for r in results:
            counts = "" if r.local_rows < 0 else f"{r.local_rows:>5} / {r.cluster_rows:<5}"
            verdict = "skipped" if r.skipped else "equal" if r.equal else "DIFFERENT"
            say(f"  {r.table:<{width}}  {counts:>13}  {verdict}"
                + (f"  ({r.note})" if r.note else ""))
        problems += [f"{r.table}: {r.note}" for r in results if not r.equal]
        if any(not r.equal for r in results) and datetime.now(UTC).strftime("%Y-%m") != month:
            # Billing closes a period at midnight UTC on the 1st: runs either side of it differ.
            problems.append("the UTC month turned during the check, so billing closed a period between the runs: rerun")
        say("timings: " + ", ".join(f"{n} {s:.0f} s" for n, s in timings))
        if problems:
            raise CheckFailed("; ".join(problems))
        say(f"passed in {time.monotonic() - started:.0f} s: {sum(1 for r in results if not r.skipped) - 1} "
            f"tables and the export files equal, tasks on executors {sorted(tasks)}")
    except (CheckFailed, SystemExit, KeyboardInterrupt, Exception) as exc:
        if not isinstance(exc, (CheckFailed, SystemExit, KeyboardInterrupt)):
            traceback.print_exc()
        if cluster is not None:
            logs = list(dict.fromkeys(logs + cluster.logs()))
        for log in logs:
            print(f"--- {log} (last lines)\n{tail(log)}", flush=True)
        # The lakes and logs stay for a look; the virtualenv (over 1 GB) is rebuilt by any rerun.
        shutil.rmtree(work / "venv", ignore_errors=True)
        print(f"cluster-check: FAILED: {exc!r} (work folder kept, without its virtualenv: {work})", flush=True)
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code else 1
    finally:
        if cluster is not None:
            cluster.stop()
    if args.keep or args.work_dir:
        say(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
