"""Operate a running TorchServe through its management API (token-aware).

    python -m scripts.ops.manage status                   # workers: state, pid, memory; queue
    python -m scripts.ops.manage scale --min 3 --max 3    # returns when the workers are READY
    python -m scripts.ops.manage describe                 # the model's full description (JSON)
    python -m scripts.ops.manage versions                 # every version loaded, the default first
    python -m scripts.ops.manage set-default --version 2.0   # /predictions/NAME answers 2.0 from now on

With several models served (`serve start --model a,b`), name one with `--model`.
The server is found through its working directory (`--workdir`, default run/, as written by
scripts.ops.serve): its config.properties gives the addresses, its key_file.json the bearer key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil
import requests

from scripts import repo
from scripts.ops.server_config import ModelChoiceError, chosen_model
from scripts.ops.torchserve_http import TorchServeClient

# TorchServe 0.12's frontend sometimes answers a scale-down with 500 ConcurrentModificationException:
# WorkLoadManager.modelChanged shuts a worker down while its batch is being answered, and
# BatchAggregator.sendError iterates that batch's jobs as they change (seen in ts_log.log, one
# CI run in a few). The scaling stopped half-way; resending the same request completes it.
RACE_RETRIES = 3
RACE_RETRY_WAIT_S = 0.5


def frontend_race(resp: requests.Response) -> bool:
    return resp.status_code == 500 and "ConcurrentModificationException" in resp.text


def worker_memory_mb(worker: dict) -> float | None:
    """Resident memory of a worker: TorchServe's own figure, else the process's RSS when local."""
    if worker.get("memoryUsage"):
        return worker["memoryUsage"] / 2**20
    try:
        return psutil.Process(int(worker["pid"])).memory_info().rss / 2**20
    except (KeyError, ValueError, psutil.Error):
        return None


def status(client: TorchServeClient, model: str) -> dict:
    """{'model', 'version', 'min', 'max', 'ready', 'pending', 'workers': [{id, status, pid, memory_mb}]}."""
    version = client.describe(model)[0]
    workers = [{"id": w.get("id"), "status": w.get("status"), "pid": w.get("pid"),
                "memory_mb": worker_memory_mb(w)} for w in version.get("workers", [])]
    return {"model": model, "version": version.get("modelVersion"),
            "min": version.get("minWorkers"), "max": version.get("maxWorkers"),
            "ready": sum(w["status"] == "READY" for w in workers),
            "pending": version.get("jobQueueStatus", {}).get("pendingRequests"),
            "workers": workers}


def format_status(st: dict) -> str:
    lines = [f"{st['model']} v{st['version']}: {st['ready']}/{len(st['workers'])} workers READY "
             f"(min {st['min']}, max {st['max']}), {st['pending']} requests queued",
             f"  {'worker':<8} {'status':<10} {'pid':>8} {'memory':>10}"]
    for w in st["workers"]:
        mem = f"{w['memory_mb']:.0f} MB" if w["memory_mb"] is not None else "?"
        lines.append(f"  {w['id']!s:<8} {w['status']!s:<10} {w['pid']!s:>8} {mem:>10}")
    return "\n".join(lines)


def put_scale(client: TorchServeClient, model: str, min_workers: int, max_workers: int,
              timeout: float) -> None:
    """One PUT of min/max, resent on the frontend's own race (frontend_race); raises
    RuntimeError when refused."""
    resp = client.scale(model, min_workers, max_workers, timeout=timeout)
    for _ in range(RACE_RETRIES):
        if not frontend_race(resp):
            break
        # Setting min/max is idempotent: the same request again finishes what the race cut short.
        time.sleep(RACE_RETRY_WAIT_S)
        resp = client.scale(model, min_workers, max_workers, timeout=timeout)
    if resp.status_code != 200:
        raise RuntimeError(f"scale refused: HTTP {resp.status_code} {resp.text.strip()}")


def settle(client: TorchServeClient, model: str, min_workers: int, max_workers: int,
           deadline: float) -> dict:
    """Wait until `min_workers` are READY and no more than `max_workers` remain; the status."""
    while True:
        st = status(client, model)
        if st["ready"] >= min_workers and len(st["workers"]) <= max_workers:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"not settled:\n{format_status(st)}")
        time.sleep(0.5)


def down_steps(current: int, min_workers: int, max_workers: int) -> list[tuple[int, int]]:
    """The (min, max) of each step from `current` workers down to `max_workers`, one worker
    at a time, then the target itself."""
    steps = [(min(min_workers, n), n) for n in range(current - 1, max_workers, -1)]
    return steps + [(min_workers, max_workers)]


def scale(client: TorchServeClient, model: str, min_workers: int, max_workers: int,
          timeout: float = 120.0) -> dict:
    """Set min/max workers synchronously; returns the status once `min_workers` are READY and
    no extra worker remains. Raises RuntimeError on refusal or timeout.

    Down, one worker per step, each step settled before the next: TorchServe 0.12 does not drain
    a worker it removes (WorkerThread.shutdown closes its channel at once, and the batch it
    holds is answered 500 "Worker scaled down." or "Worker died."), so each removed worker may
    still fail one batch, which clients resend (the client library's contract). One at a time, at most one
    batch is failing at any moment while the remaining workers keep serving, and each PUT's
    window for the frontend's race (frontend_race) covers a single worker."""
    if not 0 <= min_workers <= max_workers:
        raise ValueError("need 0 <= --min <= --max")
    deadline = time.monotonic() + timeout
    current = len(status(client, model)["workers"])
    for step_min, step_max in down_steps(current, min_workers, max_workers):
        put_scale(client, model, step_min, step_max, max(1.0, deadline - time.monotonic()))
        # synchronous=true answers when new workers are started; wait for READY and for the
        # removed workers to leave the list.
        st = settle(client, model, step_min, step_max, deadline)
    return st


def versions(client: TorchServeClient, model: str) -> list[dict]:
    """[{'version', 'default', 'ready', 'workers'}] of every version of `model` the server holds
    (GET /models/NAME/all), the default one (GET /models/NAME's) first."""
    default = client.describe(model)[0].get("modelVersion")
    out = [{"version": v.get("modelVersion"), "default": v.get("modelVersion") == default,
            "ready": sum(w.get("status") == "READY" for w in v.get("workers", [])),
            "workers": len(v.get("workers", []))} for v in client.describe_all(model)]
    return sorted(out, key=lambda v: not v["default"])


def set_default(client: TorchServeClient, model: str, version: str) -> list[dict]:
    """Make `version` the one /predictions/NAME (no version in the path) answers; returns
    versions() once the server reports it. Not kept across a restart: the first archive in
    load_models is the default at start. Raises RuntimeError if refused (unknown version: 404)."""
    resp = client.set_default(model, version)
    if resp.status_code != 200:
        raise RuntimeError(f"set-default refused: HTTP {resp.status_code} {resp.text.strip()}")
    now = versions(client, model)
    if now[0]["version"] != version:
        raise RuntimeError(f"the default is still {now[0]['version']} after set-default {version}")
    return now


def format_versions(vs: list[dict]) -> str:
    return "\n".join(f"  {v['version']:<10} {'default' if v['default'] else '':<8} "
                     f"{v['ready']}/{v['workers']} workers READY" for v in vs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["status", "scale", "describe", "versions", "set-default"])
    parser.add_argument("--model", help="default: the one model the server serves (with several: "
                                        "name one)")
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="server working directory (config.properties, key_file.json)")
    parser.add_argument("--min", type=int, dest="min_workers", help="scale: minimum workers")
    parser.add_argument("--max", type=int, dest="max_workers", help="scale: maximum workers")
    parser.add_argument("--timeout", type=float, default=120.0, help="scale: seconds to settle")
    parser.add_argument("--version", help="set-default: the model version to make the default")
    parser.add_argument("--json", action="store_true", help="status, versions: print JSON")
    args = parser.parse_args(argv)
    try:
        args.model = chosen_model(args.workdir, args.model)
    except ModelChoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: no server config: {exc}", file=sys.stderr)
        return 1
    try:
        client = TorchServeClient.from_workdir(args.workdir)
        if args.action == "describe":
            print(json.dumps(client.describe(args.model), indent=2))
        elif args.action == "status":
            st = status(client, args.model)
            print(json.dumps(st) if args.json else format_status(st))
        elif args.action in ("versions", "set-default"):
            if args.action == "set-default" and not args.version:
                parser.error("set-default needs --version")
            vs = (set_default(client, args.model, args.version) if args.action == "set-default"
                  else versions(client, args.model))
            print(json.dumps(vs) if args.json else f"{args.model}:\n{format_versions(vs)}")
        else:
            if args.min_workers is None:
                parser.error("scale needs --min (and optionally --max)")
            st = scale(client, args.model, args.min_workers,
                       args.max_workers if args.max_workers is not None else args.min_workers,
                       args.timeout)
            print(json.dumps(st) if args.json else format_status(st))
    except (OSError, requests.RequestException, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
