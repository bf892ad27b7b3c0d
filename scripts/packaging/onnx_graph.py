"""Post-export clean-up of an ONNX graph so that ONNX Runtime can fuse it.

torch's exporter writes each Pad with an empty `constant_value` input (""), and ORT's Pad+Conv
fusion rejects a Pad with an empty optional input: every one of those Pads then stays a separate
node with layout reorders around it. Dropping trailing empty inputs means the same thing to ONNX
(an absent optional input) and lets the fusion happen, once the pads themselves are constants
(EfficientNetLite0.fix_input_size).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def drop_empty_trailing_inputs(path: Path) -> int:
    """Rewrite the model at `path` without trailing empty node inputs; returns how many went."""
    import onnx

    model = onnx.load(str(path))
    dropped = 0
    for node in model.graph.node:
        inputs = list(node.input)
        while inputs and inputs[-1] == "":
            inputs.pop()
            dropped += 1
        if len(inputs) != len(node.input):
            del node.input[:]
            node.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return dropped


def op_counts(path: Path, optimized: bool = False) -> Counter:
    """Node types in the graph; with `optimized`, in the graph ORT runs after its CPU fusions."""
    import onnx

    if not optimized:
        return Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.intra_op_num_threads = 1
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
