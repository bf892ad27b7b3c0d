"""The errors a request can be answered with, one class per outcome (in the style of KServe's
`errors.py`). The class decides the HTTP status; a raise site names only the `type` clients
read and the message. The JSON body is the same for all: {"code", "type", "message"}.

    HandlerError          the base: status (class attribute), error_type, message, to_json()
    ├── InputError        the request's fault: answered alone, its batch goes on
    │   ├── BadInput          400  unreadable or unusable input (EmptyInput, CorruptImage, ...)
    │   ├── TooLarge          413  over a size or cost limit (ImageTooLarge, TooManyScans, ...)
    │   ├── UnsupportedMedia  415  not an image, or not an accepted format
    │   └── NotServed         501  a route this model does not serve (explanations)
    └── ServerFault       500  our fault: a bug hit while preparing one request (logged)

Client errors and server faults are counted apart (handler/observability.py): an InputError is never
a server fault, a ServerFault never the client's.
"""

from __future__ import annotations

from typing import ClassVar


class HandlerError(Exception):
    """An answer of `status` with a JSON body. Raise a concrete subclass: the bases have no status."""

    status: ClassVar[int]

    def __init__(self, error_type: str, message: str) -> None:
        if not hasattr(self, "status"):  # a base class: which status it would be is undecided
            raise TypeError(f"{type(self).__name__} has no status; raise one of its subclasses")
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    def to_json(self) -> dict:
        return {"code": self.status, "type": self.error_type, "message": self.message}


class InputError(HandlerError, ValueError):
    """A client error: what the request sent cannot be turned into a prediction."""


class BadInput(InputError):
    status = 400


class TooLarge(InputError):
    status = 413


class UnsupportedMedia(InputError):
    status = 415


class NotServed(InputError):
    """A request for an endpoint this service does not implement (e.g. /explanations)."""

    status = 501

    def __init__(self, route: str) -> None:
        super().__init__("NotImplemented",
                         f"This model does not serve {route}; POST the image to /predictions/NAME.")


class ServerFault(HandlerError):
    """What the client of a request that hit a server-side bug gets (the details are logged)."""

    status = 500

    def __init__(self) -> None:
        super().__init__("InternalServerError", "The server failed on this image; the error is logged.")
