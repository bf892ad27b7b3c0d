"""Container / Kubernetes probe for the TorchServe service.

    python -m scripts.ops.healthcheck ready [--min-workers N]   # readiness, every model served
    python -m scripts.ops.healthcheck ready --model NAME        # readiness of one model
    python -m scripts.ops.healthcheck live                      # liveness

ready: `serve start` has finished its warm-up (no WORKDIR/warm_up.pending), each model served
       (config.properties' load_models; `--model`: that one alone) has at least N READY workers
       (default: its minWorkers; the management API, which does not queue behind predictions)
       AND the models answer. `GET /ping` alone is not enough: it says "Healthy" while every
       worker of the only model crash-loops. "Answers" is read first from the frontend's
       Prometheus counters, which do not queue either: requests answered since the previous
       probe (kept in WORKDIR/health_state.json) prove it under traffic; requests received with
       none answered is not ready. Those counters are the whole server's, not each model's.
       Only when no traffic arrived since the previous probe (the queue is then empty) does the
       probe send its own tiny prediction, one to each model. So under overload the probe does
       not wait in the queue it is judging, and every replica does not go unready at once.
       Not ready either when the bearer keys expire within a quarter of their life (the
       renewer renews them at half): every client would soon be refused.
live:  the frontend answers /ping (restarting the container will not fix a model that fails to
       load, so liveness does not look at workers); a dead frontend fails it.

Exit codes: 0 ok, 1 not ready (workers or prediction), 2 server unreachable or no key.
The server is found through its working directory (config.properties + key_file.json; no key
file is needed where the config turns token authorization off).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.keys import expiry_s, seconds_left
from scripts.ops.serve import WARM_UP_PENDING, in_flight
from scripts.ops.server_config import CONFIG_FILE, ModelChoiceError, read_properties, served_models
from scripts.ops.torchserve_http import TorchServeClient, sample_jpeg

STATE_FILE = "health_state.json"

OK, NOT_READY, UNREACHABLE = 0, 1, 2


def ready_models(client: TorchServeClient, workdir: Path, model: str | None) -> list[str]:
    """The models `ready` checks: `model`, else every model the server's config names, else
    (load_models=all) every model the server lists."""
    if model:
        return [model]
    try:
        return served_models(workdir)
    except ModelChoiceError:
        return client.models()


def check_ready(client: TorchServeClient, models: list[str], min_workers: int | None = None,
                state: Path | None = None) -> tuple[int, str]:
    """Ready when every model in `models` has its READY workers and answers (the module's
    docstring). The traffic counters are the whole server's: under traffic they stand for every
    model; without traffic each model answers a prediction of its own."""
    if not models:
        return NOT_READY, "no model is served"
    counts = []
    for model in models:
        code, workers = check_workers(client, model, min_workers)
        if code != OK:
            return code, f"{model}: {workers}"
        counts.append(f"{model}: {workers}")
    ready = ", ".join(counts)
    verdict = traffic_verdict(client, state)
    if verdict is not None:
        code, how = verdict
        return code, f"{'ready' if code == OK else 'not ready'}: {ready}; {how}"
    for model in models:
        code, answer = check_prediction(client, model)
        if code != OK:
            return code, f"{model}: {answer}"
    return OK, f"ready: {ready}; prediction ok"


def check_workers(client: TorchServeClient, model: str, min_workers: int | None) -> tuple[int, str]:
    """OK and "N READY workers" when `model` has at least `min_workers` READY (default: its
    minWorkers, at least 1), else why not."""
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
    return OK, f"{ready} READY workers"


def check_prediction(client: TorchServeClient, model: str) -> tuple[int, str]:
    """OK when `model` answers the probe's tiny prediction."""
    try:
        resp = client.predict(model, sample_jpeg())
    except (OSError, requests.RequestException) as exc:
        return UNREACHABLE, f"inference API unreachable: {exc}"
    if resp.status_code != 200 or "predictions" not in resp.text:
        return NOT_READY, f"prediction answered HTTP {resp.status_code}: {resp.text[:200]}"
    return OK, "prediction ok"


def traffic_verdict(client: TorchServeClient, state: Path | None) -> tuple[int, str] | None:
    """From the frontend's counters since the previous probe: OK when requests were answered,
    NOT_READY when requests arrived and none was answered, None (send a prediction) when there
    was no traffic or nothing to compare with."""
    if state is None:
        return None
    try:
        received, answered = in_flight(client.metrics())
    except (OSError, requests.RequestException, ValueError, IndexError):
        return None
    try:
        before = json.loads(state.read_text())
    except (OSError, ValueError):
        before = None
    try:
        state.write_text(json.dumps({"received": received, "answered": answered}))
    except OSError:
        return None
    if not before or answered < before["answered"]:  # first probe, or the server restarted
        return None
    if answered > before["answered"]:
        return OK, f"{answered - before['answered']:.0f} requests answered since the last probe"
    if received > before["received"]:
        return NOT_READY, (f"{received - before['received']:.0f} requests received since the last "
                           "probe and none answered")
    return None


def keys_expiring(workdir: Path, key_file: Path) -> str | None:
    """Why the server is about to refuse every client, or None: the renewer renews the keys at
    half their life, so less than a quarter left means it has stopped renewing."""
    try:
        left = seconds_left(key_file)
    except (OSError, ValueError, KeyError):
        return None  # unreadable mid-rewrite: the next probe reads it
    if left is None or left > expiry_s(workdir) / 4:
        return None
    return (f"the bearer keys expire in {max(left, 0):.0f} s and are not being renewed: see "
            f"{Path(workdir) / 'key_renewer.out'} and supervisor.out")


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
    parser.add_argument("--model", help="ready: this model only (default: every model the server "
                                        "serves)")
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="server working directory (config.properties, key_file.json)")
    parser.add_argument("--min-workers", type=int, help="default: the model's minWorkers")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per HTTP call")
    args = parser.parse_args(argv)
    try:
        client = TorchServeClient.from_workdir(args.workdir, timeout=args.timeout)
        props = read_properties(args.workdir / CONFIG_FILE)
        auth_off = props.get("disable_token_authorization") == "true"
        if not auth_off and not Path(client.key_file).is_file():
            raise FileNotFoundError(f"no key file at {client.key_file} (server not started?)")
    except OSError as exc:
        print(f"unreachable: {exc}", file=sys.stderr)
        return UNREACHABLE
    try:
        models = ready_models(client, args.workdir, args.model) if args.probe == "ready" else []
    except (OSError, requests.RequestException, ValueError) as exc:
        print(f"management API unreachable: {exc}", file=sys.stderr)
        return UNREACHABLE
    expiring = None if auth_off or args.probe != "ready" else keys_expiring(args.workdir, client.key_file)
    if args.probe == "ready" and (args.workdir / WARM_UP_PENDING).exists():
        code, message = NOT_READY, "warming up (serve start sends predictions before it announces READY)"
    elif expiring:
        code, message = NOT_READY, expiring
    else:
        code, message = (check_ready(client, models, args.min_workers, args.workdir / STATE_FILE)
                         if args.probe == "ready" else check_live(client))
    print(message, file=sys.stdout if code == OK else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
