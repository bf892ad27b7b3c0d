"""The worker side of the service: what runs inside TorchServe, shipped in every .mar as `handler/`.

One request's way through it, one module per step:

    request.py        the request's view, read once: headers, ids, protocol, body read as JSON
    protocols/        each protocol in one module, reading its request and writing its answer:
                      plain.py (raw body, multipart field, JSON base64) and open_inference.py
                      (KServe v2); the envelope (statuses, Content-Types, request ids)
    preprocessing.py  image bytes -> checked, decoded, resized, normalized CHW tensor (or the
                      model's own code on the RGB image: model_code.py)
    runner.py         batch tensor -> logits (ONNX Runtime, TorchScript, torch.export, eager)
    head.py           logits -> probabilities (softmax, sigmoid, ...; views averaged)
    responses.py      probabilities -> top-k JSON; each request's Answer (body and status)

    classifier.py     the BaseHandler subclass: decode -> preprocess -> inference -> postprocess
                      -> envelope, per batch
    torchserve_entry.py  the archive's --handler file: TorchServe's one class, nothing else

Beside them: errors.py (an error class per outcome: client errors, server faults), settings.py
(strict config keys, handler defaults and their environment overrides), layout.py (the archive's
file names), integrity.py (the unpacked archive against its pinned manifest, run first by
torchserve_entry.py, standard library only), provenance.py (versions and imported modules at
load), device.py (GPU or CPU, and precision), model_code.py (the model's own code: its architecture
file, its preprocessing module, its code folder), observability.py (metrics, JSON logs and traces,
one object around the stages; logs.py and tracing.py are its parts).

This package imports torch, numpy, Pillow, onnxruntime and TorchServe's `ts`, never `scripts`.
"""
