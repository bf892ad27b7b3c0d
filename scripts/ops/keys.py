"""Keep a server's bearer keys valid: renew each one before it expires.

TorchServe 0.12 expires its inference and management keys `token_expiration_min` minutes after
making them (60 by default) and never renews them by itself; after that every call, `/ping`
included, is refused. Its management API renews on request: `GET /token?type=inference` (or
`management`) with the API key, which does not expire, makes a fresh key of that type and
rewrites key_file.json. The renewer does that once less than half of the keys' lifetime is
left, so the key in the file is always valid. It reads the time left from the key file's expiry
on the wall clock, which TorchServe expires keys by, every few seconds: a suspend or a clock
step is noticed within a poll, and a restarted renewer renews keys already past half their life
at once (a schedule on the monotonic clock missed both). Clients re-read the file when it
changes (server_config.KeyFile) and resend once a request that raced a renewal
(server_config.auth_refused).

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
POLL_S = 2.0  # how often the key file's expiry is compared with the wall clock
RETRY_S = 5.0  # after a failed renewal (the server not up yet, or restarting)


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


def renewal_due(left: float | None, lifetime: float) -> bool:
    """Whether to renew now: at most half of the keys' `lifetime` is `left` (seconds, by the wall
    clock; None: no key expires)."""
    return left is not None and left <= lifetime / 2


def renew_forever(workdir: Path, poll: float = POLL_S) -> int:
    """While the server runs, renew both keys whenever the key file says less than half of their
    lifetime (token_expiration_min) is left; checked every `poll` s."""
    workdir = Path(workdir)
    lifetime, key_file = expiry_s(workdir), workdir / KEY_FILE
    print(f"[keys] renewing the bearer keys once less than {lifetime / 2:.0f} s of their "
          f"{lifetime:.0f} s is left (checked every {poll:g} s)", flush=True)
    retry_at = 0.0
    while server_running(workdir):
        try:
            due = renewal_due(seconds_left(key_file), lifetime)
        except (OSError, ValueError, KeyError):
            due = False  # not written yet: TorchServe writes it as it starts
        if due and time.monotonic() >= retry_at:
            try:
                rotate(workdir)
                print(f"[keys] renewed at {time.strftime('%H:%M:%S')}", flush=True)
            except (OSError, KeyError, ValueError, requests.RequestException) as exc:
                print(f"[keys] renewal failed ({exc}); retrying in {RETRY_S:g} s", flush=True)
                retry_at = time.monotonic() + RETRY_S
        time.sleep(poll)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["renew", "rotate"])
    parser.add_argument("--workdir", type=Path, default=repo.RUN_DIR,
                        help="server working directory (config.properties, key_file.json)")
    args = parser.parse_args(argv)
    if args.action == "rotate":
        try:
            rotate(args.workdir)
        except (OSError, KeyError, ValueError, requests.RequestException) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("keys renewed")
        return 0
    return renew_forever(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
