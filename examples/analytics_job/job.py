"""An analytics batch job that publishes metrics and dashboard updates through sse-gateway.

Every interval it computes (simulated) figures for a workspace and publishes, in one batch:
- a metric sample on `metrics:{workspace}` (event "metric"), and
- the refreshed dashboard on `dashboards:{dashboard}` (event "update"),
so a browser showing that dashboard updates live. The batch is all-or-nothing on the gateway.

Run against the dev setup of `cargo run --release` (see README.md):

    python examples/analytics_job/job.py --workspace ws1 --dashboard sales --iterations 10
"""

import argparse
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

from sse_gateway_sdk import Event, Publisher

SERVICE = "analytics-service"
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default="ws1")
    ap.add_argument("--dashboard", default="sales")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    failures = 0
    revenue = 0.0
    with publisher() as pub:
        for i in range(args.iterations):
            orders = random.randint(5, 50)
            revenue += orders * random.uniform(10, 100)
            cpu = round(0.5 + 0.4 * math.sin(i / 3), 3)
            batch = pub.publish_batch([
                Event(f"metrics:{args.workspace}", {"name": "job_cpu", "value": cpu, "iteration": i}, "metric"),
                Event(f"dashboards:{args.dashboard}",
                      {"orders": orders, "revenue": round(revenue, 2), "iteration": i, "updated_at": time.time()},
                      "update", f"{args.dashboard}-{i}-{os.getpid()}"),
            ])
            if batch.ok:
                print(f"iteration {i}: published {batch.ids}", flush=True)
            else:
                failures += 1  # already logged by the SDK; the job goes on
            if i + 1 < args.iterations:
                time.sleep(args.interval)
    print(f"done: {args.iterations - failures}/{args.iterations} updates published", flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
