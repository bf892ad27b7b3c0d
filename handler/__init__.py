"""The worker side of the service: what runs inside TorchServe, shipped in every .mar as `handler/`.

One request's way through it, one module per step:

    payload.py        request row (raw body, multipart field, JSON base64) -> image bytes
    preprocessing.py  image bytes -> checked, decoded, resized, normalized CHW tensor (or the
                      model's own code on the RGB image: preprocess_code.py)
    runner.py         batch tensor -> logits (ONNX Runtime, TorchScript, torch.export, eager)
    responses.py      logits -> top-k JSON; each request's Answer (body and status)
    envelopes.py      answers -> what the call's protocol sends (TorchServe's own API, KServe v2)

    classifier.py     the BaseHandler subclass that strings those together per batch
    torchserve_entry.py  the archive's --handler file: TorchServe's one class, nothing else

Beside them: errors.py (an error class per outcome: client errors, server faults), settings.py
(strict config keys, handler defaults and their environment overrides), layout.py (the archive's
file names), integrity.py (the unpacked archive against its pinned manifest, run first by
torchserve_entry.py, standard library only), provenance.py (versions and imported modules at
load), metrics.py (handler metrics, stage timing),
batch.py (a batch's state), device.py (GPU or CPU, and precision), code_files.py (importing a
model's own file: its architecture file, its preprocessing module), request_ids.py, logs.py and
tracing.py (each answer's request id, one JSON log line per request, OpenTelemetry spans).

This package imports torch, numpy, Pillow, onnxruntime and TorchServe's `ts`, never `scripts`.
"""
