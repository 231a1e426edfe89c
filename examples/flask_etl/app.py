"""A small Flask ETL service that streams its step logs to browsers through sse-gateway.

    POST /workspaces/<ws>/workflows/<wf>/run[?rows=N&delay=SECONDS]

runs a (simulated) extract -> transform -> load workflow. Each step publishes a log line on
`logs:{ws}:{wf}` (event "log") and the run ends with a throughput sample on `metrics:{ws}`.
A browser subscribed to those channels watches the run live.

Publishing never breaks the ETL: a failed publish (gateway down, ...) is logged by the SDK and
returned as a result with ok=False; the run goes on.

Run against the dev setup of `cargo run --release` (see README.md):

    python examples/flask_etl/app.py        # http://127.0.0.1:5000
"""

import os
import random
import time
from pathlib import Path

from flask import Flask, jsonify, request

from sse_gateway_sdk import Publisher

SERVICE = "l5-etl-service"
REPO = Path(__file__).resolve().parents[2]


def publisher() -> Publisher:
    """$SSE_GATEWAY_* when set, else the dev setup's certificates under <repo>/certs/."""
    if os.environ.get("SSE_GATEWAY_CERT"):
        return Publisher()
    certs = REPO / "certs"
    return Publisher(
        os.environ.get("SSE_GATEWAY_ADDR", "localhost:50051"),
        ca=str(certs / "ca.pem"),
        cert=str(certs / f"{SERVICE}.pem"),
        key=str(certs / f"{SERVICE}-key.pem"),
    )


app = Flask(__name__)
pub = publisher()  # one gRPC channel for the whole app, shared by all requests


def log(ws: str, wf: str, level: str, step: str, message: str, **extra):
    line = {"level": level, "step": step, "message": message, "at": time.time(), **extra}
    return pub.publish_log(ws, wf, line)


@app.post("/workspaces/<ws>/workflows/<wf>/run")
def run_workflow(ws: str, wf: str):
    rows = int(request.args.get("rows", 1000))
    delay = float(request.args.get("delay", 0.5))
    started = time.monotonic()
    results = [log(ws, wf, "info", "start", f"workflow {wf} started", rows=rows)]

    # extract
    time.sleep(delay)
    data = [random.random() for _ in range(rows)]
    results.append(log(ws, wf, "info", "extract", f"extracted {len(data)} rows", rows=len(data)))

    # transform
    time.sleep(delay)
    kept = [x for x in data if x > 0.1]
    dropped = len(data) - len(kept)
    level = "warn" if dropped else "info"
    results.append(log(ws, wf, level, "transform", f"kept {len(kept)} rows, dropped {dropped}", rows=len(kept)))

    # load
    time.sleep(delay)
    results.append(log(ws, wf, "info", "load", f"loaded {len(kept)} rows", rows=len(kept)))

    took = time.monotonic() - started
    results.append(log(ws, wf, "info", "done", f"workflow {wf} finished in {took:.2f}s"))
    metric = pub.publish_metric(ws, {"name": "etl_rows_per_second", "value": round(len(kept) / max(took, 1e-6), 1),
                                     "workflow_id": wf})
    results.append(metric)

    return jsonify({
        "workspace_id": ws,
        "workflow_id": wf,
        "rows_loaded": len(kept),
        "seconds": round(took, 3),
        # The ETL succeeded whatever happened to publishing; say what did.
        "published": [{"channel": r.channel, "ok": r.ok, "id": r.id, "code": r.code} for r in results],
    })


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", 5000)))
