"""--telemetry, --admin-port, --otlp-endpoint: a real dewy server scraped as Prometheus would, and pushed to an OTLP stand-in."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import free_port, get
from tests.test_e2e_server import release, start

COUNTERS = ("dewy_deployments_total", "dewy_deployment_errors_total", "dewy_rollbacks_total", "dewy_app_crashes_total",
            "dewy_registry_errors_total", "dewy_healthchecks_total", "dewy_healthchecks_failures_total",
            "dewy_server_restarts_total", "dewy_deployment_duration_seconds_count")


def scrape(port: int, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, by name and labels, parsed as Prometheus parses it."""
    status, body = get(port, "/metrics")
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"command": "server", **labels}.items()))), 0.0)


def moved(before: dict, after: dict) -> dict[str, float]:
    """How each counter moved (labels included in the key), zeros left out."""
    keys = {k for k in before.keys() | after.keys() if k[0] in COUNTERS}
    out = {}
    for name, labels in keys:
        delta = after.get((name, labels), 0.0) - before.get((name, labels), 0.0)
        if delta:
            out[name + "".join(f",{k}={v}" for k, v in labels if k != "command")] = delta
    return out


@pytest.fixture
def telemetry(tmp_path):
    registry = tmp_path / "registry"
    release(registry, "v1.0.0")
    admin = free_port()
    dewy = start(tmp_path, free_port(), "--telemetry", "--admin-port", str(admin), "-i", "1")
    try:
        assert dewy.wait_for("admin-api")["port"] == admin
        dewy.wait_for("deployed", version="v1.0.0")
        yield dewy, admin, registry
    finally:
        dewy.kill()


def test_counters_move_by_exactly_one_with_a_deploy_a_failed_poll_a_rollback_and_a_crash(telemetry, tmp_path) -> None:
    dewy, admin, registry = telemetry
    first = scrape(admin)
    assert value(first, "dewy_deployments_total") == 1
    assert value(first, "dewy_deployed_version_info", version="v1.0.0") == 1
    assert value(first, "dewy_quarantined_versions") == 0

    release(registry, "v1.1.0")
    dewy.wait_for("deployed", version="v1.1.0")
    deployed = scrape(admin)
    assert moved(first, deployed) == {"dewy_deployments_total": 1, "dewy_deployment_duration_seconds_count": 1,
                                      "dewy_server_restarts_total,reason=deploy": 1, "dewy_healthchecks_total": 1}
    assert value(deployed, "dewy_deployed_version_info", version="v1.1.0") == 1
    assert value(deployed, "dewy_polls_total", result="ok") > value(first, "dewy_polls_total", result="ok")
    assert value(deployed, "dewy_deployment_last_success_timestamp_seconds") > value(first, "dewy_deployment_last_success_timestamp_seconds")

    hidden = registry.with_name("registry.away")
    registry.rename(hidden)
    dewy.wait_for("deploy-failed")
    failed = scrape(admin)
    hidden.rename(registry)
    assert moved(deployed, failed) == {"dewy_registry_errors_total,kind=registry": 1}
    assert value(failed, "dewy_polls_total", result="error") == 1

    release(registry, "v1.2.0", "CRASH")
    dewy.wait_for("rollback", version="v1.2.0")
    dewy.wait_for("deploy-failed")
    rolled_back = scrape(admin)
    assert moved(failed, rolled_back) == {"dewy_rollbacks_total": 1, "dewy_deployment_errors_total": 1}
    assert value(rolled_back, "dewy_quarantined_versions") == 1
    assert value(rolled_back, "dewy_deployed_version_info", version="v1.1.0") == 1

    pid = json.loads((tmp_path / "app" / ".dewy" / "state.json").read_text())["app"]["pid"]
    os.kill(pid, signal.SIGKILL)
    dewy.wait_for("app-exited")
    dewy.wait_for("app-ready")
    crashed = scrape(admin)
    assert moved(rolled_back, crashed) == {"dewy_app_crashes_total": 1, "dewy_healthchecks_total": 1}


def test_api_status_is_what_dewy_status_json_prints(telemetry, tmp_path) -> None:
    dewy, admin, _ = telemetry
    status, body = get(admin, "/api/status")
    printed = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(tmp_path / "app"), "--json"],
                             capture_output=True, text=True, check=True).stdout
    assert status == 200
    served, expected = json.loads(body), json.loads(printed)
    for recheck in (served, expected):
        recheck.pop("last_check")  # written at most once a minute, may change between the two reads
    assert served == expected
    assert served["version"] == "v1.0.0" and served["app"]["running"]
    assert get(admin, "/api/containers")[0] == 404  # container mode only


def test_the_admin_port_taken_means_the_next_one(tmp_path) -> None:
    release(tmp_path / "registry", "v1.0.0")
    taken = free_port()
    with __import__("socket").socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        dewy = start(tmp_path, free_port(), "--admin-port", str(taken))
        try:
            port = dewy.wait_for("admin-api")["port"]
            assert taken < port < taken + 10, "the next free one (taken + 1 unless someone else holds that too)"
            dewy.wait_for("deployed", version="v1.0.0")
            assert get(port, "/api/status")[0] == 200
            assert get(port, "/metrics")[0] == 404  # no --telemetry
        finally:
            dewy.kill()


def test_a_token_is_needed_when_set_and_off_loopback_dewy_refuses_to_start_without_one(tmp_path) -> None:
    release(tmp_path / "registry", "v1.0.0")
    refused = subprocess.run(
        [sys.executable, "-m", "dewy", "server", "-r", (tmp_path / "registry").as_uri(), "--telemetry",
         "--admin-address", "0.0.0.0", "-d", str(tmp_path / "app"), "--", "true"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "DEWY_ADMIN_TOKEN"})
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "DEWY_ADMIN_TOKEN" in refused.stderr, refused.stderr

    admin = free_port()
    secret = "s3cret-admin-token"
    dewy = start(tmp_path, free_port(), "--telemetry", "--admin-port", str(admin), env={"DEWY_ADMIN_TOKEN": secret})
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        assert get(admin, "/metrics")[0] == 401
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {secret}"})
        response = connection.getresponse()
        assert response.status == 200 and b"dewy_deployments_total" in response.read()
        connection.close()
    finally:
        dewy.kill()
    assert dewy.seen and not any(secret in json.dumps(record) for record in dewy.seen)


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP collector stand-in: keeps every metric it is sent, by name."""

    def __init__(self) -> None:
        self.metrics: dict[str, list] = {}
        self.got = threading.Event()

    def Export(self, request, context):
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.metrics.setdefault(metric.name, []).append(metric)
        self.got.set()
        return metrics_service_pb2.ExportMetricsServiceResponse()


def test_otlp_endpoint_pushes_the_same_series_under_upstreams_names(tmp_path) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        release(tmp_path / "registry", "v1.0.0")
        admin = free_port()
        dewy = start(tmp_path, free_port(), "--otlp-endpoint", f"127.0.0.1:{port}", "--otlp-insecure",
                     "--admin-port", str(admin))  # --otlp-endpoint implies --telemetry
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            assert get(admin, "/metrics")[0] == 200
        finally:
            assert dewy.stop() == 0  # the last push happens on the way out
        assert receiver.got.wait(10)
    finally:
        server.stop(0)
    deployments = receiver.metrics["dewy.deployments.total"][-1]
    assert deployments.sum.is_monotonic and deployments.unit == "{deployment}"
    [point] = deployments.sum.data_points
    assert point.as_int == 1 or point.as_double == 1
    assert {a.key: a.value.string_value for a in point.attributes} == {"command": "server"}
    duration = receiver.metrics["dewy.deployment.duration"][-1]
    assert duration.unit == "s" and duration.histogram.data_points[0].count == 1
    assert list(duration.histogram.data_points[0].explicit_bounds) == [1, 5, 10, 30, 60, 120, 300, 600]


IDLE = textwrap.dedent("""
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from dewy.cli import main

    state = Path(sys.argv[1]) / ".dewy" / "state.json"

    def report():
        while not (state.exists() and json.loads(state.read_text()).get("app")):
            time.sleep(0.05)
        time.sleep(1)  # idle: a few polls after the deploy
        rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry")
                        or m.startswith("dewy.telemetry.metrics") or m.startswith("dewy.telemetry.otlp"))
        print(json.dumps({"rss_kib": rss, "loaded": loaded}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=report, daemon=True).start()
    sys.exit(main(sys.argv[2:]))
""")


def idle(tmp_path: Path, *extra: str) -> dict:
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    args = ["server", "-r", (tmp_path / "registry").as_uri(), "-i", "0.2", "-d", str(work), "-c", (tmp_path / "cache").as_uri(),
            "--admin-port", str(free_port()), *extra, "--", sys.executable, "current/app.py"]
    done = subprocess.run([sys.executable, "-c", IDLE, str(work), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_without_telemetry_no_metrics_code_is_loaded_and_with_it_idle_rss_stays_within_5_mb(tmp_path) -> None:
    release(tmp_path / "registry", "v1.0.0")
    plain = idle(tmp_path)
    assert plain["loaded"] == []
    metered = idle(tmp_path, "--telemetry")
    assert "prometheus_client" in metered["loaded"] and not any(m.startswith("opentelemetry") for m in metered["loaded"])
    assert metered["rss_kib"] - plain["rss_kib"] < 5 * 1024, (plain, metered)


def test_container_list_without_a_running_dewy_is_one_line(tmp_path) -> None:
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "dewy", "container", "list", "--admin-port", str(port)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"nothing answers on 127.0.0.1 ports {port}-{port + 9}" in done.stderr
