"""Client for the TorchServe image classifier: `Client` / `AsyncClient` and the `classify` CLI.

It reads the rotating bearer key from TorchServe's key_file.json (again whenever the file changes
and when a key is refused) or from $IMAGE_CLASSIFIER_KEY, sends image bytes with an image
Content-Type, resends a prediction the server lost (contract.py: bounded in attempts and time),
speaks TorchServe's own API (v1) and the Open Inference Protocol (v2), and returns typed
results or raises one error per outcome (errors.py).
"""

from image_classifier_client.client import AsyncClient, Client
from image_classifier_client.contract import RetryPolicy
from image_classifier_client.errors import (
    AuthError,
    ClassifierError,
    ClientError,
    Overloaded,
    ServerError,
    Unavailable,
)
from image_classifier_client.keys import KeySource
from image_classifier_client.results import Classification, Prediction

__version__ = "1.0.0"
__all__ = ["AsyncClient", "AuthError", "Classification", "ClassifierError", "Client", "ClientError",
           "KeySource", "Overloaded", "Prediction", "RetryPolicy", "ServerError", "Unavailable"]
