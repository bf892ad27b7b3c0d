"""One exception per outcome of a prediction; `exit_code` is what the `classify` CLI exits with.

    ClassifierError       the base
    ├── ClientError       4xx: the request's fault (bad image, unknown model); the server's message
    ├── AuthError         the key was refused, also after reading it again
    ├── Overloaded        503: the server's queue is full (or the edge's wait is longer than allowed)
    ├── Unavailable       no answer: the retry budget is spent on lost requests or broken connections
    └── ServerError       another 5xx, or an answer that is not a prediction
"""

from __future__ import annotations


class ClassifierError(Exception):
    exit_code = 1

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.message, self.status, self.attempts = message, status, attempts


class ClientError(ClassifierError):
    """A 4xx: `error_type` and `message` as the server's JSON body names them."""

    exit_code = 3

    def __init__(self, message: str, status: int, error_type: str = "", body: object = None,
                 attempts: int = 1) -> None:
        super().__init__(message, status, attempts)
        self.error_type, self.body = error_type, body

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        return f"{self.status}{kind}: {self.message}"


class AuthError(ClassifierError):
    exit_code = 4


class Overloaded(ClassifierError):
    """503: resend later, not at once. `retry_after` is the server's Retry-After, if any."""

    exit_code = 5

    def __init__(self, message: str, status: int = 503, retry_after: float | None = None,
                 attempts: int = 1) -> None:
        super().__init__(message, status, attempts)
        self.retry_after = retry_after


class Unavailable(ClassifierError):
    """Every attempt was lost (no answer, a broken connection, "Worker died."); `resent` lists
    what each resent attempt got."""

    exit_code = 6

    def __init__(self, message: str, status: int | None = None, attempts: int = 1,
                 resent: list | None = None) -> None:
        super().__init__(message, status, attempts)
        self.resent = list(resent or [])


class ServerError(ClassifierError):
    exit_code = 7
