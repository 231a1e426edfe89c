"""A small Flask ETL service that streams its step logs to browsers through sse-gateway.

    POST /workspaces/<ws>/workflows/<wf>/run[?rows=N&delay=SECONDS]

runs a (simulated) extract -> transform -> load workflow. Each step publishes a log line on
`logs:{ws}:{wf}` (event "log") and the run ends with a throughput sample on `metrics:{ws}`.
A browser subscribed to those channels watches the run live.

Publishing never breaks the ETL: a failed publish (gateway down, ...) is logged by the SDK and
returned as a result with ok=False; the run goes on.

It is also the gateway's permission service (`[authz] url = "http://127.0.0.1:5000/sse/authorize"`):
workspace membership lives here, not in tokens, and the gateway asks

    POST /sse/authorize   {"sub": "alice", "roles": [], "channels": ["logs:ws1:wf1", ...]}

with the subscriber's own token, which this app verifies itself (HS256, the shared secret).

    PUT    /workspaces/<ws>/members/<user>    add a member     (token with role "admin")
    DELETE /workspaces/<ws>/members/<user>    remove a member  (token with role "admin")

Run against the dev setup of `cargo run --release` (see README.md):

    python examples/flask_etl/app.py        # http://127.0.0.1:5000
"""

import functools
import os
import random
import threading
import time
from pathlib import Path

import jwt
from flask import Flask, jsonify, request

from sse_gateway_sdk import Control, Publisher

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


def control() -> Control:
    """The gateway's Control service, with the same certificate (its `[[publishers]]` entry has
    `control = true`; in the dev setup it has)."""
    if os.environ.get("SSE_GATEWAY_CERT"):
        return Control()
    certs = REPO / "certs"
    return Control(
        os.environ.get("SSE_GATEWAY_ADDR", "localhost:50051"),
        ca=str(certs / "ca.pem"),
        cert=str(certs / f"{SERVICE}.pem"),
        key=str(certs / f"{SERVICE}-key.pem"),
    )


@functools.cache
def jwt_secret() -> bytes:
    """$SSE_GATEWAY_JWT_SECRET when set, else the dev setup's <repo>/certs/dev-secret: the
    secret the gateway verifies subscriber tokens with (read when first needed, so the ETL
    routes work without it)."""
    if os.environ.get("SSE_GATEWAY_JWT_SECRET"):
        return os.environ["SSE_GATEWAY_JWT_SECRET"].encode()
    return (REPO / "certs" / "dev-secret").read_bytes().rstrip()


app = Flask(__name__)
pub = publisher()  # one gRPC channel for the whole app, shared by all requests
ctl = control()

# The app's own permission model: who belongs to which workspace. A real app keeps this in
# its database; tokens do not list it (a user may belong to thousands of workflows).
MEMBERS: dict[str, set[str]] = {"ws1": {"alice", "bob"}, "ws2": {"bob"}}
MEMBERS_LOCK = threading.Lock()
# Channel types whose second segment is a workspace id (logs:ws:wf, metrics:ws, workflow:ws:wf).
WORKSPACE_CHANNELS = {"logs", "metrics", "workflow"}
# How long the gateway may reuse an answer. Removing a member also unsubscribes them through
# the gateway's Control service, so their open streams drop the workspace's channels at once.
ANSWER_TTL_SECS = 30


def user_of(req):
    """The verified claims of the request's bearer token, or None."""
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return jwt.decode(token, jwt_secret(), algorithms=["HS256"], leeway=30,
                          options={"require": ["exp", "sub"]})
    except jwt.InvalidTokenError:
        return None


def may_read(user: str, channel: str):
    """None when `user` may read `channel`, else the reason they may not."""
    kind, _, rest = channel.partition(":")
    if kind not in WORKSPACE_CHANNELS:
        return f"{kind} channels are not this app's to grant"
    workspace = rest.split(":")[0]
    with MEMBERS_LOCK:
        if user in MEMBERS.get(workspace, set()):
            return None
    return f"not a member of workspace {workspace}"


@app.post("/sse/authorize")
def authorize():
    """The gateway's permission callback: one verdict per channel asked."""
    claims = user_of(request)
    if claims is None:
        return {"error": "invalid token"}, 401  # the gateway then denies: "authorizer unavailable"
    body = request.get_json(silent=True) or {}
    if body.get("sub") != claims["sub"]:
        return {"error": "sub does not match the token"}, 403
    allow, deny = [], []
    for channel in body.get("channels", []):
        reason = may_read(claims["sub"], channel)
        if reason is None:
            allow.append(channel)
        else:
            deny.append({"channel": channel, "reason": reason})
    return {"allow": allow, "deny": deny, "ttl_secs": ANSWER_TTL_SECS}


def admin_only():
    claims = user_of(request)
    if claims is None:
        return {"error": "invalid token"}, 401
    if "admin" not in claims.get("roles", []):
        return {"error": "needs role admin"}, 403
    return None


@app.put("/workspaces/<ws>/members/<user>")
def add_member(ws: str, user: str):
    if (refused := admin_only()) is not None:
        return refused
    with MEMBERS_LOCK:
        MEMBERS.setdefault(ws, set()).add(user)
        members = sorted(MEMBERS[ws])
    return {"workspace_id": ws, "members": members}


@app.delete("/workspaces/<ws>/members/<user>")
def remove_member(ws: str, user: str):
    """Removes `user` from workspace `ws`: from now on the callback denies them its channels,
    and the gateway drops those channels from the user's open streams (on every node)."""
    if (refused := admin_only()) is not None:
        return refused
    with MEMBERS_LOCK:
        MEMBERS.get(ws, set()).discard(user)
        members = sorted(MEMBERS.get(ws, set()))
    reason = f"removed from workspace {ws}"
    # A failed call is logged by the SDK and returned with ok=False; the membership change
    # stands either way (the callback refuses the channels once cached answers expire).
    patterns = [f"logs:{ws}", f"logs:{ws}:**", f"metrics:{ws}", f"workflow:{ws}:**"]
    results = [ctl.unsubscribe(user, pattern, reason=reason) for pattern in patterns]
    return {"workspace_id": ws, "members": members,
            "unsubscribed": {"ok": all(r.ok for r in results), "streams": sum(r.streams for r in results)}}


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
