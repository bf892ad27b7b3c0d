"""TorchServe's entry point: the archive's `--handler` file, at the archive root.

TorchServe imports this module and instantiates the one class defined in it. All behaviour
lives in the `handler` package shipped beside it (handler/classifier.py).

Before it imports anything of that package, it verifies the directory it was imported from
(handler/integrity.py: every file against the manifest, the manifest against the server's pin,
no bytecode anywhere). The verifier's source is compiled here from its file, not imported:
`import handler.integrity` would first run handler/__init__.py, and an import may load bytecode
from `__pycache__` instead of the source, both before anything was checked. In-process use
(`handler.torchserve_entry`, the tests) skips this: `initialize` checks the same at load.
"""

import sys


def _verify_archive() -> None:
    """Refuse the import (IntegrityError) unless the model directory is exactly the pinned archive."""
    from pathlib import Path
    from types import ModuleType

    source = Path(__file__).resolve().parent / "handler" / "integrity.py"
    verifier = ModuleType("archive_integrity")  # not in sys.modules: nothing else can reach it
    verifier.__file__ = str(source)
    exec(compile(source.read_bytes(), str(source), "exec"), verifier.__dict__)
    verifier.verify_entry(__file__, sys.flags.dont_write_bytecode)


if __name__ == "torchserve_entry":  # imported by TorchServe's worker, from the model directory
    # Python writes bytecode beside each module it imports: a restarted worker would find it,
    # and could not tell it from bytecode planted there.
    sys.dont_write_bytecode = True
    _verify_archive()

from handler.classifier import ImageClassifierHandler as _ImageClassifierHandler  # noqa: E402


class ImageClassifierHandler(_ImageClassifierHandler):
    """The class TorchServe instantiates (it must be defined in this module, not imported)."""
