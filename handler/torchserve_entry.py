"""TorchServe's entry point: the archive's `--handler` file, at the archive root.

TorchServe imports this module and instantiates the one class defined in it. All behaviour
lives in the `handler` package shipped beside it (handler/classifier.py).
"""

from handler.classifier import ImageClassifierHandler as _ImageClassifierHandler


class ImageClassifierHandler(_ImageClassifierHandler):
    """The class TorchServe instantiates (it must be defined in this module, not imported)."""
