"""Python stubs for TorchServe's gRPC APIs, generated from the protos its installed frontend jar
carries (ts/frontend/model-server.jar: proto/inference.proto, management.proto,
open_inference_grpc.proto), so the client always speaks the served version's protocol. Nothing
generated is committed: the stubs live in build/grpc/FINGERPRINT/, FINGERPRINT being the sha256 of
the protos and of the generator's versions, so a new TorchServe or grpcio-tools regenerates them
and two checkouts' processes never write over each other's files.

    python -m scripts.ops.grpc_stubs            # generate if missing (make grpc-stubs)
    python -m scripts.ops.grpc_stubs --force    # generate again

load() imports them (generating first when missing) as the package `torchserve_grpc`, from its
folder, without touching sys.path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from scripts import repo

OUT_DIR = repo.BUILD_DIR / "grpc"
PACKAGE = "torchserve_grpc"
PROTOS = ("inference", "management", "open_inference_grpc")
JAR_PROTO_DIR = "proto/"
# inference.proto imports it; the jar carries a copy (compiled against only: its Python module
# comes from googleapis-common-protos, google.rpc.status_pb2). google/protobuf/empty.proto
# comes with grpcio-tools.
JAR_INCLUDES = ("google/rpc/status.proto",)
GENERATOR_PACKAGES = ("grpcio-tools", "protobuf")


class StubError(RuntimeError):
    """The stubs could not be generated or imported: the message says what to do."""


@dataclass(frozen=True)
class Stubs:
    """The generated modules: messages (*_pb2) and service stubs (*_pb2_grpc)."""

    inference_pb2: ModuleType
    inference_pb2_grpc: ModuleType
    management_pb2: ModuleType
    management_pb2_grpc: ModuleType
    open_inference_grpc_pb2: ModuleType
    open_inference_grpc_pb2_grpc: ModuleType
    folder: Path


def frontend_jar() -> Path:
    """The installed TorchServe's frontend jar (found without importing ts)."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise StubError("TorchServe (the ts package) is not installed: make install-dev")
    jar = Path(next(iter(spec.submodule_search_locations))) / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise StubError(f"TorchServe's frontend jar is missing: {jar}")
    return jar


def jar_sources(jar: Path) -> dict[str, bytes]:
    """{path relative to the include root: bytes}: our protos under PACKAGE/, and their includes."""
    with zipfile.ZipFile(jar) as zf:
        names = set(zf.namelist())
        wanted = {f"{PACKAGE}/{name}.proto": f"{JAR_PROTO_DIR}{name}.proto" for name in PROTOS}
        wanted.update({path: path for path in JAR_INCLUDES})
        missing = sorted(entry for entry in wanted.values() if entry not in names)
        if missing:
            raise StubError(f"{jar} has no {', '.join(missing)}: not the TorchServe these stubs "
                            "are made for (0.12)")
        return {dest: zf.read(entry) for dest, entry in wanted.items()}


def fingerprint(sources: dict[str, bytes]) -> str:
    """What the generated code depends on: the protos and the generator's versions."""
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(path.encode() + b"\0" + sources[path] + b"\0")
    for package in GENERATOR_PACKAGES:
        digest.update(f"{package}=={_version(package)}\0".encode())
    return digest.hexdigest()[:16]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise StubError(f"{package} is not installed: make install-dev "
                        "(requirements-dev.txt)") from None


def generate(out_dir: Path = OUT_DIR, jar: Path | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Generate the stubs into out_dir/FINGERPRINT/ unless they are there (or force); returns
    that folder. Written in a temporary folder first, then renamed into place: a process that
    loses the race keeps the winner's identical files."""
    jar = jar or frontend_jar()
    sources = jar_sources(jar)
    folder = Path(out_dir) / fingerprint(sources)
    if (folder / PACKAGE / "__init__.py").is_file() and not force:
        return folder
    if progress:
        print(f"[grpc] generating stubs from {jar.name} ({', '.join(PROTOS)}) into {folder}",
              file=sys.stderr, flush=True)
    t0 = time.monotonic()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".staging-") as staging:
        built = _compile(Path(staging), sources)
        if force:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            built.rename(folder)
        except OSError:  # another process renamed its identical build first
            if not (folder / PACKAGE / "__init__.py").is_file():
                raise
    if progress:
        print(f"[grpc] stubs ready in {time.monotonic() - t0:.2f} s", file=sys.stderr, flush=True)
    return folder


def _compile(staging: Path, sources: dict[str, bytes]) -> Path:
    """Run grpcio-tools' protoc on the protos in staging/src; returns staging/out."""
    from grpc_tools import protoc  # the generator, needed only here

    src, out = staging / "src", staging / "out"
    for path, data in sources.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    (out / PACKAGE).mkdir(parents=True)
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = ["protoc", f"-I{src}", f"-I{well_known}", f"--python_out={out}",
            f"--grpc_python_out={out}"] + [str(src / PACKAGE / f"{name}.proto") for name in PROTOS]
    status = protoc.main(args)
    if status != 0:
        raise StubError(f"protoc failed with status {status} on {', '.join(PROTOS)} (its "
                        "messages are above)")
    (out / PACKAGE / "__init__.py").write_text('"""Generated by scripts.ops.grpc_stubs: do not edit."""\n')
    return out


@lru_cache(maxsize=1)
def load(out_dir: Path = OUT_DIR, progress: bool = True) -> Stubs:
    """The generated modules, generated first if missing, imported from their folder as the
    package PACKAGE (its own __path__: sys.path is left alone)."""
    folder = generate(out_dir, progress=progress)
    package_dir = folder / PACKAGE
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and list(getattr(loaded, "__path__", [])) != [str(package_dir)]:
        raise StubError(f"{PACKAGE} is already imported from {loaded.__path__}, not {package_dir}")
    if loaded is None:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    try:
        modules = {f"{name}{kind}": importlib.import_module(f"{PACKAGE}.{name}{kind}")
                   for name in PROTOS for kind in ("_pb2", "_pb2_grpc")}
    except ImportError as exc:  # e.g. google.rpc missing: googleapis-common-protos
        raise StubError(f"the generated stubs in {package_dir} do not import ({exc}): "
                        "make install-dev (requirements-dev.txt)") from exc
    return Stubs(folder=folder, **modules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the generated stubs")
    parser.add_argument("--force", action="store_true", help="generate even if up to date")
    args = parser.parse_args(argv)
    try:
        folder = generate(args.out, force=args.force)
    except StubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[grpc] stubs: {folder / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
