"""Client errors: a request the service cannot turn into a prediction, answered with its own
4xx JSON body while the rest of its batch goes on. Anything else is a server error."""

from __future__ import annotations


class InputError(ValueError):
    """A client error: `status` (4xx) and `error_type` travel to the client with `message`."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def to_json(self) -> dict:
        return {"code": self.status, "type": self.error_type, "message": self.message}


def internal_error() -> InputError:
    """What the client of a request that hit a server-side bug gets (the details are logged)."""
    return InputError(500, "InternalServerError", "The server failed on this image; the error is logged.")


def not_served(route: str) -> InputError:
    """A request for an endpoint this service does not implement (e.g. /explanations)."""
    return InputError(501, "NotImplemented",
                      f"This model does not serve {route}; POST the image to /predictions/NAME.")
