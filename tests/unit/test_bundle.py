"""The Databricks bundle: valid against the official schema, and everything it names exists.

The schema is the one `databricks bundle schema` prints (Databricks CLI, pinned in the
Makefile); it is committed as tests/fixtures/databricks_bundle_schema.json so CI needs
neither the CLI nor a workspace. `make bundle-schema` rebuilds the CLI and regenerates it.
The bundle is checked twice: as written (with `${var.*}` references, which the schema
allows where the CLI resolves them) and with the variables resolved for each target,
which is what the CLI would deploy.
"""
from __future__ import annotations

import copy
import glob
import json
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

from pipelines.entrypoints import ENTRY_POINTS
from pipelines.runner import BATCH_JOBS, JOBS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "fixtures" / "databricks_bundle_schema.json"
VENV_BIN = Path(sys.executable).parent
REFERENCE = re.compile(r"\$\{(var|bundle)\.([A-Za-z0-9_.-]+)\}")
# What the schedule must cover (the list): the batch jobs behind each entry point.
SCHEDULED = {"billing", "export", "plan-rules", "quality", "fraud"}
STREAMS = {"bronze", "silver", "gold", "notify"}


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
    """The jobs read the credentials through dbutils.secrets (pipelines/kafka_clients.py)
    from the scope and keys named here; no value, nor a reference to one, is in the env."""
    from pipelines.kafka_auth import DEFAULT_PASSWORD_KEY, DEFAULT_USERNAME_KEY

    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env["KAFKA_SASL_SECRET_SCOPE"] == "${var.kafka_secret_scope}"
    assert (env["KAFKA_SASL_USERNAME_KEY"], env["KAFKA_SASL_SECRET_KEY"]) == (DEFAULT_USERNAME_KEY, DEFAULT_PASSWORD_KEY)
    assert "KAFKA_SASL_USERNAME" not in env and "KAFKA_SASL_PASSWORD" not in env
    assert env["KAFKA_SECURITY_PROTOCOL"] == "${var.kafka_security_protocol}"
    assert bundle["variables"]["kafka_security_protocol"]["default"] == "SASL_SSL"
    text = "\n".join(p.read_text() for p in [ROOT / "databricks.yml", *(ROOT / "resources").glob("*.yml")])
    assert not re.search(r"(password|token|secret)\s*:\s*['\"]?[A-Za-z0-9]{8,}", text, re.IGNORECASE)


def test_the_pii_key_is_named_in_a_secret_scope_only(bundle):
    """Silver refuses to start on Databricks without a PII key (pipelines/pii_key.py): the
    jobs are told the scope, the key inside it is pii.yaml's, and no value is in the env."""
    from pipelines.pii import load_pii_config

    key = load_pii_config().key
    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env[key.scope_env] == "${var.pii_secret_scope}"
    assert bundle["variables"]["pii_secret_scope"]["description"].count(key.scope_key) == 1
    assert key.env not in env


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
    cli = shutil.which("databricks", path=str(ROOT / ".local" / "bin"))
    if cli is None:
        pytest.skip("Databricks CLI not built (make databricks-cli); the committed schema is used")
    printed = subprocess.run([cli, "bundle", "schema"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(printed.stdout) == json.loads(SCHEMA.read_text(encoding="utf-8"))


class _Workspace(BaseHTTPRequestHandler):
    """The few workspace calls `bundle validate` makes (who am I, does the bundle folder
    exist, its permissions), answered locally: validation itself is the CLI's, offline."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if "/scim/v2/Me" in self.path:
            body = {"userName": "ci@example.com", "id": "1", "groups": [{"display": "billing-data-engineers"}]}
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


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_cli_validates_the_bundle_when_it_is_installed(target, tmp_path):
    cli = shutil.which("databricks", path=str(ROOT / ".local" / "bin"))
    if cli is None:
        pytest.skip("Databricks CLI not built (make databricks-cli)")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Workspace)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABRICKS_CONFIG_FILE": str(tmp_path / "none.cfg"),
           "DATABRICKS_HOST": f"http://127.0.0.1:{server.server_port}", "DATABRICKS_TOKEN": "not-a-secret"}
    try:
        done = subprocess.run([cli, "bundle", "validate", "-t", target, "--output", "json",
                               "--var", "kafka_bootstrap_servers=broker:9093",
                               "--var", "prod_service_principal=11111111-2222-3333-4444-555555555555"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr and "Warning" not in done.stderr, done.stderr
    resolved = json.loads(done.stdout)
    jobs = resolved["resources"]["jobs"]
    assert set(jobs) == set(load_bundle()["resources"]["jobs"])
    env_vars = jobs["lakehouse_billing_close"]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert env_vars["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9093"
    assert env_vars["KAFKA_SASL_SECRET_SCOPE"] == "billing-lakehouse"


def test_analysts_are_granted_the_analyst_schema_only(bundle):
    """Unity Catalog side of the analyst surface (README "Security"): SELECT on the analyst
    schema (views over silver and gold, no bronze, no quarantine) for the analyst group, no
    grant on the jobs' schema, and the jobs told the schema's deployed name."""
    schemas = bundle["resources"]["schemas"]
    analyst = schemas["analyst"]
    assert analyst["catalog_name"] == "${var.catalog}" and analyst["name"] == "${var.analyst_schema}"
    assert analyst["grants"] == [{"principal": "${var.analyst_group}", "privileges": ["USE_SCHEMA", "SELECT"]}]
    assert all(s["name"] != "${var.schema}" for s in schemas.values()), "no schema resource re-declares the jobs' one"
    env = bundle["variables"]["job_cluster"]["default"]["spark_env_vars"]
    assert env["LAKEHOUSE_ANALYST_SCHEMA"] == "${resources.schemas.analyst.name}"
    assert resolve(bundle, "prod")["resources"]["schemas"]["analyst"]["name"] == "lakehouse_analyst"
    assert resolve(bundle, "dev")["resources"]["schemas"]["analyst"]["name"] == "billing_dev_analyst"
