"""Where a worker runs its model: the GPU TorchServe assigned it, else the CPU.

TorchServe gives each worker a `gpu_id` in `context.system_properties` when the server has
GPUs (`number_of_gpu`, round-robin over the devices) and None when it has none. The worker
follows it; a GPU it cannot use (no CUDA in this torch, no CUDA provider in ONNX Runtime)
falls back to the CPU with a reason, so one log line says what the worker does and why.

Reduced precision (bfloat16/float16) is used only on a GPU, only for TorchScript, and only
when the archive's manifest records that the export validated it against the FP32 model
(`validation.reduced_precision`, scripts/packaging/precision.py): the manifest is the proof.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from handler.settings import ConfigError

CPU = "cpu"
FP32 = "float32"
REDUCED = ("bfloat16", "float16")
# handler setting `precision`: auto = the validated reduced precision on a GPU, else float32.
PRECISIONS = ("auto", FP32, *REDUCED)
CUDA_PROVIDER = "CUDAExecutionProvider"
# Backends whose runner (handler/runner.py ModuleRunner) is CPU-only.
CPU_ONLY_BACKENDS = ("eager", "torch-export")
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Placement:
    """The device and dtype a runner uses, and why (for the start-up log line)."""

    device: str = CPU
    dtype: str = FP32
    reason: str = "no GPU assigned by TorchServe"
    providers: Sequence = field(default=(CPU_PROVIDER,))

    @property
    def on_gpu(self) -> bool:
        return self.device != CPU

    def describe(self) -> str:
        return f"{self.device} ({self.dtype}): {self.reason}"


ON_CPU = Placement()  # the default everywhere: FP32 on the CPU


def _validated_dtype(validation: Mapping | None) -> str | None:
    """The reduced precision the export validated, if it passed."""
    reduced = (validation or {}).get("reduced_precision") or {}
    return reduced.get("dtype") if reduced.get("passed") else None


def placement(gpu_id: int | str | None, backend: str, precision: str = "auto",
           validation: Mapping | None = None, cuda_available: bool = False,
           ort_providers: Sequence[str] = ()) -> Placement:
    """Pure decision from what TorchServe assigned and what this process can do.

    Raises ConfigError when `precision` names a reduced precision the manifest does not show
    was validated: serving unvalidated numerics silently is what the manifest exists to stop."""
    if precision not in PRECISIONS:
        raise ConfigError(f"handler precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    validated = _validated_dtype(validation)
    if precision in REDUCED and precision != validated:
        raise ConfigError(f"handler precision {precision!r} was not validated at export "
                          f"(manifest: {validated or 'no reduced precision validated'}); "
                          "re-export, or use precision auto or float32")
    if gpu_id is None or str(gpu_id) == "":
        return ON_CPU
    if backend in CPU_ONLY_BACKENDS:
        return Placement(reason=f"TorchServe assigned GPU {gpu_id}, but {backend} archives run on "
                                "the CPU here (TorchScript or ONNX archives use the GPU)")
    device = f"cuda:{int(gpu_id)}"
    if backend == "onnx":
        if CUDA_PROVIDER not in ort_providers:
            return Placement(reason=f"TorchServe assigned GPU {gpu_id}, but ONNX Runtime has no "
                                    f"{CUDA_PROVIDER} (install onnxruntime-gpu): running on the CPU")
        # ONNX archives run in FP32 on the GPU: a reduced-precision ONNX graph would be a
        # different artifact, validated on its own.
        return Placement(device, FP32, f"GPU {gpu_id} assigned by TorchServe (ONNX Runtime CUDA)",
                         ((CUDA_PROVIDER, {"device_id": int(gpu_id)}), CPU_PROVIDER))
    if not cuda_available:
        return Placement(reason=f"TorchServe assigned GPU {gpu_id}, but this torch has no usable "
                                "CUDA: running on the CPU")
    if precision == "auto":
        dtype = validated or FP32
        why = "validated at export" if validated else "no reduced precision validated at export"
    else:
        dtype, why = precision, "set in the model config"
    return Placement(device, dtype, f"GPU {gpu_id} assigned by TorchServe; {dtype} {why}")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def place(system_properties: Mapping, backend: str, precision: str = "auto",
          validation: Mapping | None = None,
          cuda_available: Callable[[], bool] = _cuda_available,
          ort_providers: Callable[[], list[str]] = _ort_providers) -> Placement:
    """`placement` with what this process can actually do (probed only when a GPU is assigned)."""
    gpu_id = system_properties.get("gpu_id")
    assigned = gpu_id is not None and str(gpu_id) != ""
    return placement(gpu_id, backend, precision, validation,
                  cuda_available=assigned and backend != "onnx" and cuda_available(),
                  ort_providers=ort_providers() if assigned and backend == "onnx" else ())
