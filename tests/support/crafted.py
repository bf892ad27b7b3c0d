"""What both halves of the crafted-images tests read: the default model's preprocessing and
the example preprocessing module (docs/examples/letterbox_preprocess.py)."""

from handler.preprocessing import PreprocessConfig
from scripts import repo
from tests.support.servers import MODEL

CFG = PreprocessConfig.load(repo.CONFIG_DIR / MODEL / "preprocess.json")
CODE = repo.ROOT / "docs" / "examples" / "letterbox_preprocess.py"
