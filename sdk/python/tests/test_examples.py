"""The Python examples run against a real gateway and their events arrive on SSE."""

import importlib.util
import os
import subprocess
import sys

from gateway import REPO

EXAMPLES = REPO / "examples"


def service_env(gateway, service):
    c = gateway.cert(service)
    return {"SSE_GATEWAY_ADDR": c["addr"], "SSE_GATEWAY_CA": c["ca"],
            "SSE_GATEWAY_CERT": c["cert"], "SSE_GATEWAY_KEY": c["key"]}


def test_flask_etl_publishes_step_logs(gateway, ws, monkeypatch):
    for k, v in service_env(gateway, "l5-etl-service").items():
        monkeypatch.setenv(k, v)
    spec = importlib.util.spec_from_file_location("flask_etl_app", EXAMPLES / "flask_etl" / "app.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        with gateway.sse([f"logs:{ws}:wf1", f"metrics:{ws}"]) as sse:
            resp = mod.app.test_client().post(f"/workspaces/{ws}/workflows/wf1/run?delay=0&rows=200")
            assert resp.status_code == 200
            body = resp.get_json()
            assert all(p["ok"] for p in body["published"]), body
            steps = [sse.next_event(f"logs:{ws}:wf1") for _ in range(5)]
            assert [e["payload"]["step"] for e in steps] == ["start", "extract", "transform", "load", "done"]
            assert all(e["event"] == "log" for e in steps)
            metric = sse.next_event(f"metrics:{ws}")
            assert metric["event"] == "metric" and metric["payload"]["name"] == "etl_rows_per_second"
    finally:
        mod.pub.close()


def test_analytics_job_publishes_metrics_and_dashboard(gateway, ws):
    dashboard = f"dash-{ws}"
    with gateway.sse([f"metrics:{ws}", f"dashboards:{dashboard}"]) as sse:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES / "analytics_job" / "job.py"), "--workspace", ws,
             "--dashboard", dashboard, "--iterations", "2", "--interval", "0"],
            env={**os.environ, **service_env(gateway, "analytics-service")},
            capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = [sse.next_event() for _ in range(4)]
        assert [(e["channel"], e["event"]) for e in got] == [
            (f"metrics:{ws}", "metric"), (f"dashboards:{dashboard}", "update")] * 2
        assert got[3]["payload"]["iteration"] == 1
