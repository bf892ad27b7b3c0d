"""Container / Kubernetes probe for the TorchServe service.

    python -m scripts.ops.healthcheck ready [--min-workers N]   # readiness
    python -m scripts.ops.healthcheck live                      # liveness

ready: the model has at least N READY workers (default: its minWorkers) AND a tiny prediction
       answers 200 with predictions. `GET /ping` alone is not enough: it says "Healthy" while
       every worker of the only model crash-loops.
live:  the frontend answers /ping (restarting the container will not fix a model that fails to
       load, so liveness does not look at workers).

Exit codes: 0 ok, 1 not ready (workers or prediction), 2 server unreachable or no key.
The server is found through its working directory (config.properties + key_file.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.client import TorchServeClient, sample_jpeg

OK, NOT_READY, UNREACHABLE = 0, 1, 2


def check_ready(client: TorchServeClient, model: str, min_workers: int | None = None) -> tuple[int, str]:
    try:
        version = client.describe(model)[0]
    except requests.HTTPError as exc:
        return NOT_READY, f"model {model} not described: {exc}"
    except (OSError, requests.RequestException, ValueError) as exc:
        return UNREACHABLE, f"management API unreachable: {exc}"
    need = version.get("minWorkers", 1) if min_workers is None else min_workers
    states = [w.get("status") for w in version.get("workers", [])]
    ready = states.count("READY")
    if ready < max(need, 1):
        return NOT_READY, f"{ready} READY workers of {need} required ({', '.join(states) or 'none'})"
    try:
        resp = client.predict(model, sample_jpeg())
    except (OSError, requests.RequestException) as exc:
        return UNREACHABLE, f"inference API unreachable: {exc}"
    if resp.status_code != 200 or "predictions" not in resp.text:
        return NOT_READY, f"prediction answered HTTP {resp.status_code}: {resp.text[:200]}"
    return OK, f"ready: {ready} READY workers, prediction ok"


def check_live(client: TorchServeClient) -> tuple[int, str]:
    try:
        resp = client.ping()
    except (OSError, requests.RequestException) as exc:
        return UNREACHABLE, f"frontend unreachable: {exc}"
    return (OK, "alive") if resp.status_code == 200 else (UNREACHABLE, f"/ping HTTP {resp.status_code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["ready", "live"])
    parser.add_argument("--model", default=repo.DEFAULT_MODEL)
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="server working directory (config.properties, key_file.json)")
    parser.add_argument("--min-workers", type=int, help="default: the model's minWorkers")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP call")
    args = parser.parse_args(argv)
    try:
        client = TorchServeClient.from_workdir(args.workdir, timeout=args.timeout)
        if not Path(client.key_file).is_file():
            raise FileNotFoundError(f"no key file at {client.key_file} (server not started?)")
    except OSError as exc:
        print(f"unreachable: {exc}", file=sys.stderr)
        return UNREACHABLE
    code, message = (check_ready(client, args.model, args.min_workers) if args.probe == "ready"
                     else check_live(client))
    print(message, file=sys.stdout if code == OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
