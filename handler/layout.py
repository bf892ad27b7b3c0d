"""The archive's layout: the one place that names the files of a model archive.

A .mar (and the build folder it is zipped from) holds, at its root:

    torchserve_entry.py   TorchServe's --handler (ENTRY_MODULE)
    handler/              this package, imported in the worker as `handler.*` (PACKAGE)
    model.onnx|model.pt|model.pt2|weights.pth
                          the serialized model (SERIALIZED_FILE by export format)
    model.py              the architecture file, where there is one (MODEL_FILE; TorchServe's
                          model file): what the eager format builds its model from
    preprocess.json       the validated preprocessing (PREPROCESS_CONFIG)
    preprocess_code.py    the model's own preprocessing module, where it has one (PREPROCESS_CODE)
    index_to_name.json    class index -> label (LABELS)
    model-config.yaml     TorchServe's model settings and our `handler:` block (MODEL_CONFIG)
    architecture.json     what the serialized model is (ARCHITECTURE)
    provenance.json       sha256 of every other file, versions, validation (MANIFEST)
    golden/               a few photos and the artifact's own answers to them (answers.json),
                          replayed by every worker before READY (GOLDEN_DIR, handler/golden.py)
    MAR-INF/MANIFEST.json written by torch-model-archiver
"""

from __future__ import annotations

PACKAGE = "handler"
ENTRY_MODULE = "torchserve_entry.py"
# onnx-int8: the same ONNX file name, holding the INT8 (QDQ) graph (scripts/packaging/quantize.py).
SERIALIZED_FILE = {"torchscript": "model.pt", "onnx": "model.onnx", "onnx-int8": "model.onnx",
                   "torch-export": "model.pt2", "eager": "weights.pth"}
MODEL_FILE = "model.py"
PREPROCESS_CODE = "preprocess_code.py"
PREPROCESS_CONFIG = "preprocess.json"
LABELS = "index_to_name.json"
MODEL_CONFIG = "model-config.yaml"
ARCHITECTURE = "architecture.json"
MANIFEST = "provenance.json"
GOLDEN_DIR = "golden"
GOLDEN_ANSWERS = f"{GOLDEN_DIR}/answers.json"
MAR_INF = "MAR-INF"
ARCHIVER_MANIFEST = f"{MAR_INF}/MANIFEST.json"
# Folders in a model directory that are not part of what was built: the archiver's own
# manifest, and the bytecode Python writes beside our modules when the worker imports them.
UNHASHED_DIRS = (MAR_INF, "__pycache__")
