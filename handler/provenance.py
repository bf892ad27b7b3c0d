"""Integrity check at load: the files a worker serves must be the files that were validated.

The build writes `provenance.json` into the archive with the SHA-256 of every bundled file
(paths relative to the archive root, `handler/preprocessing.py` included) and the library
versions used at export. The files, and the manifest against the server's pin, are checked by
handler/integrity.py: first by `torchserve_entry.py` before any other module of the archive is
imported, then again here at `initialize` (an in-process handler has no entry module). This module
adds what needs the imported package: the `handler` modules this process actually runs must be
the archive's (code from anywhere but the archive is refused the same way), and the library
versions must be the export's. Any difference refuses the load; no setting of the archive can
turn that off.

The version rule follows what runs the graph. A TorchScript archive is run by torch, so the running
torch must be the exporting one's major.minor (torchvision too, where it is installed: the runtime
image has none). An ONNX archive is run by ONNX Runtime; torch is imported only because
TorchServe's worker imports it, so a CPU-only runtime with another torch serves it.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Mapping
from pathlib import Path

from handler import integrity, layout
from handler.integrity import IntegrityError, sha256_file, sha256_stream

__all__ = ["IntegrityError", "sha256_stream", "sha256_file", "built_files", "find_mismatches",
           "verify_model_dir", "installed_versions", "running_versions", "version_mismatches",
           "environment", "environment_differences"]

logger = logging.getLogger(__name__)

# Libraries whose major.minor must match the export's, per archive format (see the docstring).
CHECKED_VERSIONS = {"torchscript": ("torch", "torchvision"), "onnx": ()}
# The libraries a worker's description reports (GET /models/NAME?customized=true).
DESCRIBED_VERSIONS = ("torch", "torchvision", "onnxruntime", "torchserve", "numpy", "pillow")
PACKAGE_DIR = Path(__file__).resolve().parent
# CPU features the kernels of torch, ONNX Runtime and libjpeg choose between (/proc/cpuinfo names).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


def built_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files a build put in `root` (not MAR-INF, not __pycache__):
    what the manifest lists. A worker refuses anything else (handler/integrity.py)."""
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not set(rel.parts[:-1]) & set(layout.UNHASHED_DIRS):
            yield rel.as_posix()


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def running_versions() -> dict[str, str]:
    """Installed versions of the checked libraries; one not installed is left out. Read from the
    package metadata, not by importing: torchvision beside another torch fails to import."""
    return installed_versions(tuple(sorted({lib for libs in CHECKED_VERSIONS.values() for lib in libs})))


def installed_versions(libs: tuple[str, ...] = DESCRIBED_VERSIONS) -> dict[str, str]:
    """Installed versions of `libs` (package metadata); one not installed is left out."""
    from importlib import metadata

    found = {}
    for lib in libs:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return found


def environment() -> dict:
    """What answers depend on beyond package versions: Pillow's libjpeg and zlib builds, ONNX
    Runtime's version and providers, torch's chosen CPU capability, the CPU's instruction sets
    (Linux's /proc/cpuinfo; left out elsewhere). Cheap: read once per worker and per build."""
    from PIL import features

    found = {"pillow": {"libjpeg": features.version("jpg"), "zlib": features.version("zlib"),
                        "libjpeg_turbo": features.version("libjpeg_turbo")},
             "torch_cpu_capability": _torch_cpu_capability(), "cpu_flags": _cpu_flags()}
    try:
        import onnxruntime
    except ImportError:  # a TorchScript-only runtime
        return found
    found["onnxruntime"] = {"version": onnxruntime.__version__,
                            "providers": onnxruntime.get_available_providers()}
    return found


def _torch_cpu_capability() -> str | None:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _cpu_flags() -> list[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    return sorted(set(flags) & set(CPU_FLAGS))


def environment_differences(manifest: dict) -> list[str]:
    """Each library version and environment entry that differs from the export's, one line each."""
    exported = {**{f"versions.{k}": v for k, v in manifest.get("versions", {}).items()},
                **_flat("environment", manifest.get("environment", {}))}
    versions = {"python": platform.python_version(),
                **installed_versions(tuple(manifest.get("versions", {})))}
    running = {**{f"versions.{k}": v for k, v in versions.items()}, **_flat("environment", environment())}
    return [f"{key}: exported {exported[key]}, running {running.get(key)}" for key in sorted(exported)
            if key in running and running[key] != exported[key]]


def _flat(prefix: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {k: v for key, item in value.items() for k, v in _flat(f"{prefix}.{key}", item).items()}


def archive_format(manifest: dict) -> str:
    """'onnx' or 'torchscript' as the manifest records it (older manifests: torchscript, the strict rule)."""
    return (manifest.get("model", {}).get("format") or manifest.get("validation", {}).get("format")
            or "torchscript")


def version_mismatches(manifest: dict, running: dict[str, str]) -> list[str]:
    """The checked libraries whose running major.minor differs from the export's, one line each."""
    fmt = archive_format(manifest)
    problems = []
    for lib in CHECKED_VERSIONS.get(fmt, CHECKED_VERSIONS["torchscript"]):
        built = manifest.get("versions", {}).get(lib)
        if not built:
            continue
        if lib not in running:
            if lib == "torch":  # the worker cannot run a TorchScript file without it
                problems.append(f"torch not installed, {fmt} archive exported with torch {built}")
            continue
        if _major_minor(built) != _major_minor(running[lib]):
            problems.append(f"{lib} {running[lib]} running, {fmt} archive exported with {built}: "
                            f"a {fmt} archive is served only by the {lib} major.minor it was exported with")
    return problems


def find_mismatches(model_dir: Path, manifest: dict) -> list[str]:
    """Every way the directory and this process differ from the manifest, one readable line each:
    the files (handler/integrity.py), the imported `handler` modules, the library versions."""
    problems = integrity.file_mismatches(Path(model_dir), manifest)
    problems += _imported_code_mismatches(manifest.get("files", {}))
    problems += version_mismatches(manifest, running_versions())
    return problems


def _imported_code_mismatches(listed: dict) -> list[str]:
    """The `handler` modules this process runs must be the archive's: a copy of the package
    elsewhere on sys.path (an old install, say) would otherwise serve unvalidated code."""
    prefix = layout.PACKAGE + "/"
    problems = []
    for name, entry in listed.items():
        if name.startswith(prefix):
            path = PACKAGE_DIR / name.removeprefix(prefix)
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                problems.append(f"module {name} imported from {PACKAGE_DIR} differs from the archive's")
    return problems


def verify_model_dir(model_dir: Path, manifest_name: str = layout.MANIFEST,
                     environ: Mapping[str, str] | None = None) -> dict:
    """The manifest, when files, manifest pin, imported code and versions all hold; else log the
    reasons and raise IntegrityError (the load is refused: there is no setting that loads anyway)."""
    try:
        if manifest_name != integrity.MANIFEST:  # the archive may not choose which manifest to trust
            raise IntegrityError(f"Integrity check failed: the manifest is {integrity.MANIFEST}, "
                                 f"not {manifest_name!r}")
        manifest = integrity.verify(Path(model_dir), environ)
        problems = _imported_code_mismatches(manifest["files"]) + version_mismatches(
            manifest, running_versions())
        if problems:
            raise IntegrityError("Integrity check failed: " + "; ".join(problems))
    except IntegrityError as exc:
        logger.error("%s (the model is not loaded)", exc)
        raise
    logger.info("Integrity check passed: %d files match %s", len(manifest["files"]), manifest_name)
    return manifest
