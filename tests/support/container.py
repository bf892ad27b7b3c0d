"""The runtime image in the tests: the runner is scripts/deploy/container.py; here, what only the
tests need. No engine or no image is an error, not a skip: `make test` builds the image first."""

from __future__ import annotations

import json

from scripts.deploy import kube_play
from scripts.deploy.container import (  # noqa: F401  (re-exported for the test modules)
    APP_DIR,
    CONTAINER_PORTS,
    IMAGE_NAME,
    Container,
    engine,
    engine_run,
    image_tag,
    run_container,
)


def require_image(image: str | None = None) -> str:
    """The image `make test` built once before the suite (`make image`), the one run_container
    runs: checked, never rebuilt here, so every module that runs it shares one build. A missing
    one is an error, not a skip."""
    image = image or image_tag()
    if engine_run("image", "inspect", image, check=False).returncode:
        raise RuntimeError(f"image {image} is missing: run `make image`")
    return image


def image_labels(image: str) -> dict:
    out = engine_run("image", "inspect", image).stdout
    return json.loads(out)[0]


def container_spec(deployment: dict) -> dict:
    """The classifier's container in a rendered Deployment."""
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == kube_play.CONTAINER)
