"""Keep a server's bearer keys valid: renew each one before it expires.

TorchServe 0.12 expires its inference and management keys `token_expiration_min` minutes after
making them (60 by default) and never renews them by itself; after that every call, `/ping`
included, is refused. Its management API renews on request: `GET /token?type=inference` (or
`management`) with the API key, which does not expire, makes a fresh key of that type and
rewrites key_file.json. The renewer does that at half the expiry, so the key in the file is
always valid. Clients re-read the file when it changes (server_config.KeyFile) and resend once
a request that raced a renewal (server_config.auth_refused).

serve.start launches one renewer per server; it stops when the server's pid file goes.

    python -m scripts.ops.keys renew --workdir run     # what serve.start runs
    python -m scripts.ops.keys rotate --workdir run    # renew both keys once, now
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import requests

from scripts import repo
from scripts.ops.server_config import CONFIG_FILE, KEY_FILE, addresses, read_keys, read_properties

KINDS = ("inference", "management")
DEFAULT_EXPIRY_MIN = 60.0  # TorchServe's token_expiration_min default


def renewal_interval(workdir: Path) -> float:
    """Seconds between renewals: half of the server's token_expiration_min."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    return float(props.get("token_expiration_min", DEFAULT_EXPIRY_MIN)) * 60 / 2


def rotate(workdir: Path, timeout: float = 10.0) -> None:
    """Renew the inference and management keys now (TorchServe rewrites key_file.json)."""
    management = addresses(workdir)[1]
    api_key = read_keys(Path(workdir) / KEY_FILE)["API"]
    for kind in KINDS:
        resp = requests.get(f"{management}/token", params={"type": kind},
                            headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
        resp.raise_for_status()


def server_running(workdir: Path) -> bool:
    """The server scripts.ops.serve started in `workdir` is still there (its pid file and pid)."""
    try:
        os.kill(int((Path(workdir) / "torchserve.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


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
