"""Keep a server's bearer keys valid: renew each one before it expires.

TorchServe 0.12 expires its inference and management keys `token_expiration_min` minutes after
making them (60 by default) and never renews them by itself; after that every call, `/ping`
included, is refused. Its management API renews on request: `GET /token?type=inference` (or
`management`) with the API key, which does not expire, makes a fresh key of that type and
rewrites key_file.json. The renewer does that at half the expiry, so the key in the file is
always valid. Clients re-read the file when it changes (server_config.KeyFile) and resend once
a request that raced a renewal (server_config.auth_refused).

serve.start's supervisor (scripts.ops.lifecycle) runs one renewer per server and restarts it if
it dies; it stops when the server's pid file goes.

    python -m scripts.ops.keys renew --workdir run     # what serve.start runs
    python -m scripts.ops.keys rotate --workdir run    # renew both keys once, now
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.lifecycle import server_running
from scripts.ops.server_config import CONFIG_FILE, KEY_FILE, addresses, read_keys, read_properties

KINDS = ("inference", "management")
DEFAULT_EXPIRY_MIN = 60.0  # TorchServe's token_expiration_min default
EXPIRY_FIELD = "expiration time"  # key_file.json: {"inference": {"key": ..., "expiration time": ISO}}


def renewal_interval(workdir: Path) -> float:
    """Seconds between renewals: half of the server's token_expiration_min."""
    return expiry_s(workdir) / 2


def expiry_s(workdir: Path) -> float:
    """A key's lifetime in seconds: the server's token_expiration_min."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    return float(props.get("token_expiration_min", DEFAULT_EXPIRY_MIN)) * 60


def seconds_left(key_file: Path, now: datetime | None = None) -> float | None:
    """Seconds until the first of the expiring keys in key_file.json expires (None: none expires)."""
    doc = json.loads(Path(key_file).read_text())
    expiries = [datetime.fromisoformat(entry[EXPIRY_FIELD]) for entry in doc.values()
                if isinstance(entry, dict) and EXPIRY_FIELD in entry]
    if not expiries:
        return None
    return (min(expiries) - (now or datetime.now(UTC))).total_seconds()


def rotate(workdir: Path, timeout: float = 10.0) -> None:
    """Renew the inference and management keys now (TorchServe rewrites key_file.json)."""
    management = addresses(workdir)[1]
    api_key = read_keys(Path(workdir) / KEY_FILE)["API"]
    for kind in KINDS:
        resp = requests.get(f"{management}/token", params={"type": kind},
                            headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        resp.raise_for_status()


def renew_forever(workdir: Path, interval: float | None = None, poll: float = 1.0) -> int:
    """Renew both keys every `interval` s (default: half the expiry) while the server runs."""
    interval = interval or renewal_interval(workdir)
    due = time.monotonic() + interval
    print(f"[keys] renewing the bearer keys every {interval:.0f} s", flush=True)
    while server_running(workdir):
        if time.monotonic() >= due:
            try:
                rotate(workdir)
                print(f"[keys] renewed at {time.strftime('%H:%M:%S')}", flush=True)
                due = time.monotonic() + interval
            except (OSError, KeyError, ValueError, requests.RequestException) as exc:
                # Not up yet, or restarting: try again soon, well before the key runs out.
                print(f"[keys] renewal failed ({exc}); retrying", flush=True)
                due = time.monotonic() + min(5.0, interval / 4)
        time.sleep(poll)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["renew", "rotate"])
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="server working directory (config.properties, key_file.json)")
    parser.add_argument("--interval", type=float, help="renew: seconds between renewals "
                        "(default: half of token_expiration_min)")
    args = parser.parse_args(argv)
    if args.action == "rotate":
        try:
            rotate(args.workdir)
        except (OSError, KeyError, ValueError, requests.RequestException) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("keys renewed")
        return 0
    return renew_forever(args.workdir, args.interval)


if __name__ == "__main__":
    sys.exit(main())
