"""Where things are in this repository (the scripts run from a checkout or an image that has
the same layout: config/, model_store/, config.properties at the root)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
CONFIG_DIR = ROOT / "config"
MODEL_STORE = ROOT / "model_store"
BUILD_DIR = ROOT / "build"
RUN_DIR = ROOT / "run"  # the working directory of the server `make serve` starts
SERVER_CONFIG = ROOT / "config.properties"
DEFAULT_MODEL = "efficientnet_lite0"
