"""The resend contract of the image classifier's TorchServe 0.12 servers, in one place.

A prediction has no side effect, so it may be sent again when the server lost it rather than
refused it:
- 500 or 507 "Worker died." / "Worker scaled down.": the worker holding its batch crashed (507
  when its exit status was 137: SIGKILL or the OOM killer) or was removed by a scale-down;
- no answer within the timeout, or the connection reset or refused before an answer: TorchServe
  0.12 now and then drops a request held by a worker it removes instead of failing it;
- 503 with `Retry-After` (a balancer's edge: its queue deadline passed), after the delay it
  names when that is at most RETRY_AFTER_MAX_S.
Never on TorchServe's own 503 (queue full, no Retry-After: resending adds load where there is
none to spare) nor on any 4xx. Each resend waits RESEND_WAIT_S x its number (or the
Retry-After); the budget bounds both the resends (RESEND_BUDGET) and the total time.

Standard library only: the clients of this package and the repository's own tools share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

RESEND_BUDGET = 2
RESEND_WAIT_S = 0.1
RETRY_AFTER_MAX_S = 2.0
# The longest one prediction may take, resends and waits included (the clients' default).
TOTAL_BUDGET_S = 30.0
# The bodies TorchServe 0.12 gives the requests of a batch whose worker went away.
LOST_MESSAGES = ("Worker died", "Worker scaled down")
# TorchServe's answer to a missing, wrong or expired bearer key (HTTP 400 in 0.12).
AUTH_REFUSED = "Token Authorization failed"
# How long to wait before re-reading the key file after a refusal: TorchServe drops the old key
# before it rewrites key_file.json.
KEY_RENEWAL_WAIT_S = 0.2


def lost(status: int, text: str) -> bool:
    """Whether TorchServe lost this request with its worker (safe to resend a prediction)."""
    return status in (500, 507) and any(m in text for m in LOST_MESSAGES)


def retry_after(status: int, header: str | None, longest: float = RETRY_AFTER_MAX_S) -> float | None:
    """The delay a 503 with Retry-After (seconds) asks for, if at most `longest`; else None."""
    if status != 503 or header is None:
        return None
    try:
        delay = float(header)
    except ValueError:
        return None  # an HTTP date: too far ahead to wait for here
    return delay if 0 <= delay <= longest else None


def auth_refused(status: int, text: str) -> bool:
    """Whether the server refused the bearer key: re-read the key, resend once."""
    return status in (400, 401) and AUTH_REFUSED in text


@dataclass(frozen=True)
class RetryPolicy:
    """How much one prediction may be resent: `resends` times at most, all of it within
    `total_s` seconds, the k-th resend after `wait_s` x k (or the edge's Retry-After)."""

    resends: int = RESEND_BUDGET
    total_s: float = TOTAL_BUDGET_S
    wait_s: float = RESEND_WAIT_S
    retry_after_max_s: float = RETRY_AFTER_MAX_S

    def start(self, record: list | None = None,
              clock: Callable[[], float] = time.monotonic) -> Attempts:
        return Attempts(self, [] if record is None else record, clock)



class Attempts:
    """One prediction's budget in use: after each attempt, whether and when to send it again.
    `resent` receives what each resent attempt got (a status, or an exception's name)."""

    def __init__(self, policy: RetryPolicy, resent: list, clock: Callable[[], float]) -> None:
        self.policy, self.resent, self.clock = policy, resent, clock
        self.started = clock()
        self.sent = 0  # attempts sent so far

    def remaining(self) -> float:
        return self.policy.total_s - (self.clock() - self.started)

    def timeout(self, per_call: float) -> float:
        """The next attempt's timeout: the per-call one, cut to the time left in the budget."""
        self.sent += 1
        return max(0.001, min(per_call, self.remaining()))

    def after_answer(self, status: int, text: str, retry_after_header: str | None) -> float | None:
        """Seconds to wait before resending after this answer, or None: the answer is final."""
        later = retry_after(status, retry_after_header, self.policy.retry_after_max_s)
        if later is None and not lost(status, text):
            return None
        return self._resend(status, self._backoff() if later is None else later)

    def after_error(self, name: str) -> float | None:
        """Seconds to wait before resending after a timeout or a broken connection, or None:
        the budget is spent."""
        return self._resend(name, self._backoff())

    def _backoff(self) -> float:
        return self.policy.wait_s * self.sent

    def _resend(self, outcome: object, wait: float) -> float | None:
        if self.sent > self.policy.resends or wait >= self.remaining():
            return None
        self.resent.append(outcome)
        return wait
