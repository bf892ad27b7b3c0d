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
(image_classifier_client.contract.auth_refused).

serve.start's supervisor (scripts.ops.lifecycle) runs one renewer per server and restarts it if
it dies; it stops when the server is gone, or its supervisor (checked every poll). A server
whose supervisor was killed is no longer renewed: `serve start` on its working directory
replaces it with a supervised one, and `healthcheck ready` fails once its keys have less than a
quarter of their life left.

    python -m scripts.ops.keys renew --workdir run     # what serve.start runs
    python -m scripts.ops.keys rotate --workdir run    # renew both keys once, now
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.lifecycle import server_running
from scripts.ops.server_config import (
    CONFIG_FILE,
    KEY_FILE,
    KeyFile,
    addresses,
    first_expiry,
    read_key_file,
    read_properties,
)

KINDS = ("inference", "management")
DEFAULT_EXPIRY_MIN = 60.0  # TorchServe's token_expiration_min default
POLL_S = 2.0  # how often the key file's expiry is compared with the wall clock
RETRY_S = 5.0  # after a failed renewal (the server not up yet, or restarting)


def expiry_s(workdir: Path) -> float:
    """A key's lifetime in seconds: the server's token_expiration_min."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    return float(props.get("token_expiration_min", DEFAULT_EXPIRY_MIN)) * 60


def seconds_left(key_file: Path, now: datetime | None = None) -> float | None:
    """Seconds until the first of the expiring keys in key_file.json expires (None: none expires).
    ValueError for a file that is not whole (server_config.read_key_file)."""
    expiry = first_expiry(read_key_file(key_file))
    return None if expiry is None else (expiry - (now or datetime.now(UTC))).total_seconds()


def rotate(workdir: Path, timeout: float = 10.0, keys: KeyFile | None = None) -> None:
    """Renew the inference and management keys now (TorchServe rewrites key_file.json). `keys`:
    the renewer's KeyFile, whose last good API key still renews when the file is truncated."""
    key_file = keys or KeyFile(Path(workdir) / KEY_FILE)
    api_key = key_file.key("API")
    if api_key is None:
        raise ValueError(f"no API key could be read from {key_file.path}")
    management = addresses(workdir)[1]
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
    lifetime, keys = expiry_s(workdir), KeyFile(workdir / KEY_FILE)
    print(f"[keys] renewing the bearer keys once less than {lifetime / 2:.0f} s of their "
          f"{lifetime:.0f} s is left (checked every {poll:g} s)", flush=True)
    retry_at, renewed_until = 0.0, None
    # Ends with the process that started it (the supervisor): a renewer that outlived a killed
    # supervisor would renew for a server nobody supervises, and nothing would restart it.
    parent = os.getppid()
    while server_running(workdir):
        if os.getppid() != parent:
            print(f"[keys] the process that started this renewer (pid {parent}) is gone: "
                  "stopping", flush=True)
            return 1
        # The last good file's expiry (None until TorchServe has written one whole), or what our
        # last renewal made, when the file lags it (a full disk truncated TorchServe's rewrite).
        left = keys.seconds_left()
        if renewed_until is not None:
            ours = (renewed_until - datetime.now(UTC)).total_seconds()
            left = ours if left is None else max(left, ours)
        if renewal_due(left, lifetime) and time.monotonic() >= retry_at:
            try:
                renewing_at = datetime.now(UTC)
                rotate(workdir, keys=keys)
                renewed_until = renewing_at + timedelta(seconds=lifetime)
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
