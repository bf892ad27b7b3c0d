"""Repository locations shared by the scripts; puts handler/ on sys.path (its modules import flat,
as they do inside a TorchServe model directory)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
CONFIG_DIR = ROOT / "config"
MODEL_STORE = ROOT / "model_store"
BUILD_DIR = ROOT / "build"
DEFAULT_MODEL = "efficientnet_lite0"

if str(HANDLER_DIR) not in sys.path:
    sys.path.insert(0, str(HANDLER_DIR))
