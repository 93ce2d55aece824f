"""The Databricks bundle: valid against the official schema, and everything it names exists.

The schema is the one `databricks bundle schema` prints (Databricks CLI, pinned in the
Makefile); it is committed as tests/fixtures/databricks_bundle_schema.json so CI needs
neither the CLI nor a workspace. `make bundle-schema` rebuilds the CLI and regenerates it.
The bundle is checked twice: as written (with `${var.*}` references, which the schema
allows where the CLI resolves them) and with the variables resolved for each target,
which is what the CLI would deploy. Then the CLI itself validates it for dev and prod:
`make test` builds the CLI and sets LAKEHOUSE_REQUIRE_DATABRICKS_CLI=1, so there a missing
CLI fails those tests instead of skipping them.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines import entrypoints, wiring
from pipelines.entrypoints import ENTRY_POINTS
from pipelines.runner import BATCH_JOBS, JOBS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "fixtures" / "databricks_bundle_schema.json"
VENV_BIN = Path(sys.executable).parent
REFERENCE = re.compile(r"\$\{(var|bundle)\.([A-Za-z0-9_.-]+)\}")
# What the schedule must cover (the list): the batch jobs behind each entry point.
SCHEDULED = {"billing", "export", "plan-rules", "quality", "fraud", "views"}
STREAMS = {"bronze", "silver", "gold", "notify"}
REQUIRE_CLI = "LAKEHOUSE_REQUIRE_DATABRICKS_CLI"
# Variables without a default, given at validate/deploy time.
CLI_VARS = {"kafka_bootstrap_servers": "broker:9093",
            "prod_service_principal": "11111111-2222-3333-4444-555555555555",
            "alert_destination_id": "00000000-aaaa-bbbb-cccc-000000000001",
            "warehouse_id": "abcdef0123456789"}


def databricks_cli() -> str:
    """The CLI `make databricks-cli` builds; a skip without it, a failure where CI requires it."""
    cli = shutil.which("databricks", path=str(ROOT / ".local" / "bin"))
    if cli is None:
        if os.environ.get(REQUIRE_CLI):
            pytest.fail(f"{REQUIRE_CLI} is set but .local/bin/databricks is missing: run `make databricks-cli`")
        pytest.skip("Databricks CLI not built (make databricks-cli)")
    return cli


def load_bundle(root: Path = ROOT) -> dict:
    """databricks.yml with its `include`d resource files merged in, as the CLI does."""
    doc = yaml.safe_load((root / "databricks.yml").read_text(encoding="utf-8"))
    for pattern in doc.get("include", []):
        for path in sorted(glob.glob(str(root / pattern))):
            part = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            for kind, items in (part.get("resources") or {}).items():
                merged = doc.setdefault("resources", {}).setdefault(kind, {})
                clash = set(merged) & set(items)
                assert not clash, f"{path}: resources.{kind} {sorted(clash)} declared twice"
                merged.update(items)
    return doc


def resolve(doc: dict, target: str) -> dict:
    """Variables for `target` (defaults, then the target's overrides) substituted everywhere."""
    values = {name: copy.deepcopy(v.get("default")) for name, v in doc["variables"].items()}
    values.update(copy.deepcopy(doc["targets"][target].get("variables") or {}))
    missing = [n for n, v in values.items() if v is None]
    # A variable without a default (the Kafka servers) must be given at deploy time.
    values.update({n: f"<{n}>" for n in missing})
    bundle = {"name": doc["bundle"]["name"], "target": target}

    def sub(node):
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [sub(v) for v in node]
        if not isinstance(node, str):
            return node
        whole = REFERENCE.fullmatch(node)
        if whole and whole.group(1) == "var" and not isinstance(values[whole.group(2)], str):
            return sub(values[whole.group(2)])   # complex variable: the value itself
        return REFERENCE.sub(lambda m: str(sub((values if m.group(1) == "var" else bundle)[m.group(2)])), node)

    out = sub({k: v for k, v in doc.items() if k not in ("variables", "targets")})
    overrides = sub({k: v for k, v in doc["targets"][target].items() if k not in ("variables", "mode", "default")})
    for key, value in overrides.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def tasks(doc: dict):
    for job_key, job in doc["resources"]["jobs"].items():
        for task in job["tasks"]:
            yield job_key, job, task


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def bundle() -> dict:
    return load_bundle()


def _leaves(error):
    """The schema wraps every node in oneOf(object, `${var}` string): report the innermost
    failures, which name the offending key, not the top-level oneOf."""
    if not error.context:
        yield error
    for sub in error.context:
        yield from _leaves(sub)


def errors(validator, doc) -> list[str]:
    found = {f"{'/'.join(map(str, e.absolute_path))}: {e.message[:160]}"
             for top in validator.iter_errors(doc) for e in _leaves(top)}
    return sorted(found)


def test_the_bundle_as_written_matches_the_official_schema(validator, bundle):
    assert errors(validator, bundle) == []
    for path in sorted((ROOT / "resources").glob("*.yml")):
        assert errors(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == [], path.name


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_resolved_bundle_matches_the_official_schema(validator, bundle, target):
    resolved = resolve(bundle, target)
    assert errors(validator, resolved) == []
    leftovers = REFERENCE.findall(json.dumps(resolved))
    assert leftovers == []


def test_the_schema_rejects_a_broken_bundle(validator, bundle):
    broken = copy.deepcopy(bundle)
    task = broken["resources"]["jobs"]["lakehouse_billing_close"]["tasks"][0]
    task["python_wheel_task"]["entrypoint"] = task["python_wheel_task"].pop("entry_point")
    broken["targets"]["dev"]["schedule"] = "daily"
    broken["resources"]["jobs"]["lakehouse_ingest"]["max_concurrent_runs"] = "one"
    found = errors(validator, broken)
    assert any("lakehouse_billing_close/tasks/0/python_wheel_task" in e and "entrypoint" in e for e in found)
    assert any(e.startswith("targets/dev") and "schedule" in e for e in found)
    assert any("lakehouse_ingest" in e for e in found)


def test_targets_dev_is_development_and_prod_is_production(bundle):
    assert bundle["targets"]["dev"]["mode"] == "development"
    assert bundle["targets"]["prod"]["mode"] == "production"
    for name in ("catalog", "schema", "kafka_bootstrap_servers"):
        assert name in bundle["variables"]


def test_kafka_credentials_are_named_in_a_secret_scope_only(bundle):
    """The jobs read the credentials through dbutils.secrets (pipelines/core/kafka_clients.py)
    from the scope and keys named here; no value, nor a reference to one, is in the env."""
    from pipelines.core.kafka_auth import DEFAULT_PASSWORD_KEY, DEFAULT_USERNAME_KEY

    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env["KAFKA_SASL_SECRET_SCOPE"] == "${var.kafka_secret_scope}"
    assert (env["KAFKA_SASL_USERNAME_KEY"], env["KAFKA_SASL_SECRET_KEY"]) == (DEFAULT_USERNAME_KEY, DEFAULT_PASSWORD_KEY)
    assert "KAFKA_SASL_USERNAME" not in env and "KAFKA_SASL_PASSWORD" not in env
    assert env["KAFKA_SECURITY_PROTOCOL"] == "${var.kafka_security_protocol}"
    assert bundle["variables"]["kafka_security_protocol"]["default"] == "SASL_SSL"
    text = "\n".join(p.read_text() for p in [ROOT / "databricks.yml", *(ROOT / "resources").glob("*.yml")])
    assert not re.search(r"(password|token|secret)\s*:\s*['\"]?[A-Za-z0-9]{8,}", text, re.IGNORECASE)


def test_the_pii_key_is_named_in_a_secret_scope_only(bundle):
    """Silver refuses to start on Databricks without a PII key (pipelines/ingest/pii_key.py): the
    jobs are told the scope, the key inside it is pii.yaml's, and no value is in the env."""
    from pipelines.ingest.pii import load_pii_config

    key = load_pii_config().key
    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env[key.scope_env] == "${var.pii_secret_scope}"
    assert bundle["variables"]["pii_secret_scope"]["description"].count(key.scope_key) == 1
    assert not {key.env, "LAKEHOUSE_PII_SALT"} & set(env)


def test_every_wheel_entry_point_is_a_script_of_the_package(bundle):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scripts = project["scripts"]
    package = re.sub(r"[-.]+", "_", project["name"])
    named = set()
    for job_key, _job, task in tasks(bundle):
        if wheel := task.get("python_wheel_task"):
            assert wheel["package_name"] == package, job_key
            assert wheel["entry_point"] in scripts, f"{job_key}: {wheel['entry_point']} not in [project.scripts]"
            assert scripts[wheel["entry_point"]].startswith("pipelines.entrypoints:")
            assert task["libraries"] == [{"whl": "../dist/*.whl"}], job_key
            named.add(wheel["entry_point"])
    assert named == set(ENTRY_POINTS)
    for script in ENTRY_POINTS:
        assert script in scripts


def test_every_job_behind_an_entry_point_is_registered_with_the_runner():
    jobs = {job for names in ENTRY_POINTS.values() for job in names}
    assert SCHEDULED <= jobs
    assert [j for j in STREAMS if j in BATCH_JOBS] == []
    unknown = sorted(j for j in jobs if j not in JOBS and j not in BATCH_JOBS)
    assert unknown == [], f"entry points run jobs the runner does not know: {unknown}"


def test_the_wiring_table_is_what_the_scripts_the_runner_and_the_bundle_use(bundle):
    """pipelines/wiring.py names every job once: its scripts are exactly pyproject's
    [project.scripts] (besides `lakehouse`) and the bundle's wheel tasks, each calling its
    function in pipelines/entrypoints.py, and the runner knows exactly its jobs."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    wired = wiring.entry_points()
    assert set(scripts) - {"lakehouse"} == set(wired)
    for script in wired:
        module, _, function = scripts[script].partition(":")
        assert module == "pipelines.entrypoints" and callable(getattr(entrypoints, function)), script
    tasks_named = {t["python_wheel_task"]["entry_point"] for _k, _j, t in tasks(bundle) if t.get("python_wheel_task")}
    assert tasks_named == set(wired)
    assert {**JOBS, **BATCH_JOBS}.keys() == wiring.JOBS.keys()
    assert {n for n, j in wiring.JOBS.items() if j.kind == wiring.STREAM} == STREAMS


def test_streams_are_continuous_and_batches_scheduled(bundle):
    jobs = bundle["resources"]["jobs"]
    assert jobs["lakehouse_ingest"]["continuous"]["pause_status"] == "UNPAUSED"
    for _key, job, task in tasks(bundle):
        wheel = task.get("python_wheel_task")
        if not wheel:
            continue
        runs = ENTRY_POINTS[wheel["entry_point"]]
        if set(runs) <= STREAMS:
            assert "--continuous" in wheel.get("parameters", []) and "continuous" in job
        else:
            assert "schedule" in job and "--continuous" not in wheel.get("parameters", [])
    scheduled = {r for _k, job, t in tasks(bundle) if "schedule" in job and t.get("python_wheel_task")
                 for r in ENTRY_POINTS[t["python_wheel_task"]["entry_point"]]}
    assert SCHEDULED <= scheduled


def test_every_notebook_task_points_at_a_notebook_in_the_repo(bundle):
    paths = []
    for job_key, _job, task in tasks(bundle):
        if nb := task.get("notebook_task"):
            path = (ROOT / "resources" / nb["notebook_path"]).resolve()
            assert path.is_file(), f"{job_key}: {path}"
            paths.append(path.name)
    assert {"backfill.ipynb", "audit.ipynb"} <= set(paths)


@pytest.mark.parametrize("script", ["lakehouse", *ENTRY_POINTS])
def test_every_installed_script_starts_with_help(script):
    exe = VENV_BIN / script
    assert exe.exists(), f"{exe} missing: reinstall the package (make venv)"
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_the_cli_prints_the_committed_schema_when_it_is_installed():
    cli = databricks_cli()
    printed = subprocess.run([cli, "bundle", "schema"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(printed.stdout) == json.loads(SCHEMA.read_text(encoding="utf-8"))


class _Workspace(BaseHTTPRequestHandler):
    """The few workspace calls `bundle validate` makes (the host's metadata, who am I, does
    the bundle folder exist, its permissions), answered locally: validation itself is the
    CLI's, offline. Nothing else is reached: an unknown call gets a 404 and fails the run
    (lookup variables, which would need one, are not used for that reason)."""

    user = "ci@example.com"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/.well-known/databricks-config"):
            host = f"http://{self.headers['Host']}"
            body = {"host_type": "WORKSPACE_HOST", "workspace_id": "1", "oidc_endpoint": f"{host}/oidc"}
        elif "/scim/v2/Me" in self.path:
            body = {"userName": self.user, "id": "1", "groups": [{"display": "billing-data-engineers"}]}
        elif "/workspace/get-status" in self.path:
            body = {"object_type": "DIRECTORY", "path": "/bundle", "object_id": 1}
        elif "/workspace/mkdirs" in self.path:
            body = {}
        elif "/permissions/" in self.path:
            body = {"object_id": "1", "object_type": "directory", "access_control_list": []}
        else:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error_code": "NOT_FOUND", "message": "not stubbed"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    do_POST = do_PUT = do_PATCH = do_GET


def cli_validate(cli: str, target: str, home: Path) -> dict:
    """`databricks bundle validate -t <target>` offline, the resolved bundle it prints.

    What works without a workspace: DATABRICKS_HOST pointing at the local stub above (a
    fake https host would be dialled for the same calls and fail), any DATABRICKS_TOKEN,
    an empty HOME and config file so no profile of the machine is read, and every variable
    without a default given with --var. prod is deployed by its service principal (a
    dashboard that embeds credentials must be deployed by the identity it runs as), so
    there the stub answers "who am I" with the principal's application id."""
    user = CLI_VARS["prod_service_principal"] if target == "prod" else _Workspace.user
    handler = type("Workspace", (_Workspace,), {"user": user})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "DATABRICKS_CONFIG_FILE": str(home / "none.cfg"),
           "DATABRICKS_HOST": f"http://127.0.0.1:{server.server_port}", "DATABRICKS_TOKEN": "not-a-secret"}
    args = [cli, "bundle", "validate", "-t", target, "--output", "json"]
    for name, value in CLI_VARS.items():
        args += ["--var", f"{name}={value}"]
    try:
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert not re.search(r"\b(Error|Warn|Warning|Recommendation)\b", done.stderr), done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_cli_validates_the_bundle_when_it_is_installed(target, tmp_path):
    resolved = cli_validate(databricks_cli(), target, tmp_path)
    resources = resolved["resources"]
    assert set(resources["jobs"]) == set(load_bundle()["resources"]["jobs"])
    env_vars = resources["jobs"]["lakehouse_billing_close"]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert env_vars["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9093"
    assert env_vars["KAFKA_SASL_SECRET_SCOPE"] == "billing-lakehouse"
    # The deployed names, which the jobs are told: development mode prefixes schemas with
    # the user (dev_ci_...), prod keeps them as they are.
    schemas = resources["schemas"]
    prefix = "dev_ci_" if target == "dev" else ""
    plain = {"dev": "billing_dev", "prod": "lakehouse"}[target]
    assert schemas["lakehouse"]["name"] == prefix + plain
    assert schemas["analyst"]["name"] == prefix + plain + "_analyst"
    assert env_vars["LAKEHOUSE_SCHEMA"] == "${resources.schemas.lakehouse.name}"
    assert resources["volumes"]["lake"]["schema_name"] == "${resources.schemas.lakehouse.name}"
    protected = {r.get("lifecycle", {}).get("prevent_destroy", False)
                 for r in (schemas["lakehouse"], resources["volumes"]["lake"])}
    assert protected == {target == "prod"}
    dashboard = resources["dashboards"]["billing_lakehouse"]
    assert dashboard["warehouse_id"] == CLI_VARS["warehouse_id"]
    assert json.loads(dashboard["serialized_dashboard"])["datasets"], "the .lvdash.json file was read"


def test_analysts_are_granted_the_analyst_schema_only(bundle):
    """Unity Catalog side of the analyst surface (docs/security.md): SELECT on the analyst
    schema (views over silver and gold, no bronze, no quarantine) for the analyst group, no
    grant on the jobs' schema or its volume, and the jobs told the schemas' deployed names."""
    schemas = bundle["resources"]["schemas"]
    analyst = schemas["analyst"]
    assert analyst["catalog_name"] == "${var.catalog}" and analyst["name"] == "${var.analyst_schema}"
    assert analyst["grants"] == [{"principal": "${var.analyst_group}", "privileges": ["USE_SCHEMA", "SELECT"]}]
    granted = [(kind, key, g["principal"]) for kind in ("schemas", "volumes")
               for key, res in bundle["resources"][kind].items() for g in res.get("grants", [])]
    assert [(k, key) for k, key, who in granted if who == "${var.analyst_group}"] == [("schemas", "analyst")]
    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env["LAKEHOUSE_ANALYST_SCHEMA"] == "${resources.schemas.analyst.name}"
    assert resolve(bundle, "prod")["resources"]["schemas"]["analyst"]["name"] == "lakehouse_analyst"
    assert resolve(bundle, "dev")["resources"]["schemas"]["analyst"]["name"] == "billing_dev_analyst"


def test_the_jobs_schema_and_volume_are_bundle_resources(bundle):
    """The bundle owns the jobs' schema and the volume that is the lake root; the jobs are
    told their deployed names (development mode prefixes schemas), the engineers may read
    them, and in prod `bundle destroy` may not drop them."""
    res = bundle["resources"]
    jobs_schema, volume = res["schemas"]["lakehouse"], res["volumes"]["lake"]
    assert (jobs_schema["catalog_name"], jobs_schema["name"]) == ("${var.catalog}", "${var.schema}")
    assert jobs_schema["grants"] == [{"principal": "${var.engineers_group}",
                                      "privileges": ["USE_SCHEMA", "SELECT", "READ_VOLUME"]}]
    assert (volume["catalog_name"], volume["schema_name"], volume["name"], volume["volume_type"]) == (
        "${var.catalog}", "${resources.schemas.lakehouse.name}", "${var.lake_volume}", "MANAGED")
    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env["LAKEHOUSE_SCHEMA"] == "${resources.schemas.lakehouse.name}"
    assert env["LAKEHOUSE_ROOT"] == "/Volumes/${var.catalog}/${resources.schemas.lakehouse.name}/${var.lake_volume}"
    for target, protected in (("prod", True), ("dev", False)):
        resolved = resolve(bundle, target)["resources"]
        assert resolved["schemas"]["lakehouse"]["lifecycle"] == {"prevent_destroy": protected}, target
        assert resolved["volumes"]["lake"]["lifecycle"] == {"prevent_destroy": protected}, target


def test_the_nightly_close_is_one_job_whose_tasks_wait_for_each_other(bundle):
    """billing -> quality -> export and plan rules: no job runs on the clock hoping the one
    before it has finished, and nothing leaves the lakehouse after a failed close or gate."""
    jobs = bundle["resources"]["jobs"]
    close = jobs["lakehouse_billing_close"]
    runs = {t["task_key"]: (t["python_wheel_task"]["entry_point"], [d["task_key"] for d in t.get("depends_on", [])])
            for t in close["tasks"]}
    assert runs == {"billing": ("lakehouse-billing", []),
                    "quality": ("lakehouse-quality", ["billing"]),
                    "export": ("lakehouse-export", ["quality"]),
                    "plan_rules": ("lakehouse-plan-rules", ["quality"]),
                    "analyst_views": ("lakehouse-views", ["billing"])}
    for entry_point in ("lakehouse-billing", "lakehouse-export", "lakehouse-plan-rules", "lakehouse-views"):
        owners = [key for key, _job, task in tasks(bundle)
                  if (task.get("python_wheel_task") or {}).get("entry_point") == entry_point]
        assert owners == ["lakehouse_billing_close"], entry_point
    assert close["max_concurrent_runs"] == 1 and close["timeout_seconds"] > 0


def test_health_rules_alert_by_email_and_webhook(bundle):
    """The stream alerts on backlog, the close on duration; both, and every failure of a
    scheduled job, reach the email and the notification destination given as variables."""
    jobs = bundle["resources"]["jobs"]
    email, hook = ["${var.alert_email}"], [{"id": "${var.alert_destination_id}"}]
    ingest = jobs["lakehouse_ingest"]
    assert {r["metric"]: r["value"] for r in ingest["health"]["rules"]} == {
        "STREAMING_BACKLOG_SECONDS": "${var.backlog_seconds_limit}",
        "STREAMING_BACKLOG_RECORDS": "${var.backlog_records_limit}"}
    assert ingest["email_notifications"]["on_streaming_backlog_exceeded"] == email
    assert ingest["webhook_notifications"]["on_streaming_backlog_exceeded"] == hook
    close = jobs["lakehouse_billing_close"]
    assert close["health"]["rules"] == [{"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN",
                                         "value": "${var.close_duration_limit_seconds}"}]
    assert close["email_notifications"]["on_duration_warning_threshold_exceeded"] == email
    assert close["webhook_notifications"]["on_duration_warning_threshold_exceeded"] == hook
    for key, job in jobs.items():
        if "schedule" in job or "continuous" in job:
            assert job["email_notifications"]["on_failure"] == email, key
            assert job["webhook_notifications"]["on_failure"] == hook, key
    for rule in (*ingest["health"]["rules"], *close["health"]["rules"]):
        assert rule["op"] == "GREATER_THAN"
    variables = bundle["variables"]
    assert "default" not in variables["alert_destination_id"], "every deploy names where alerts go"
    assert all(isinstance(variables[v]["default"], int)
               for v in ("backlog_seconds_limit", "backlog_records_limit", "close_duration_limit_seconds"))
