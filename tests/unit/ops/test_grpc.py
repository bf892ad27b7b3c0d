"""The gRPC stubs (scripts.ops.grpc_stubs): generated from the installed TorchServe jar's protos
into a git-ignored folder, never committed, and keyed by a fingerprint a changed proto changes."""

from __future__ import annotations

import subprocess
import zipfile

from scripts.ops import grpc_stubs
from tests.support.servers import ROOT


def test_stubs_come_from_the_installed_jar_into_an_ignored_folder():
    stubs = grpc_stubs.load()
    with zipfile.ZipFile(grpc_stubs.frontend_jar()) as jar:
        assert b"service InferenceAPIsService" in jar.read("proto/inference.proto")
    service = stubs.inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert service.full_name == "org.pytorch.serve.grpc.inference.InferenceAPIsService"
    assert {"Predictions", "Ping"} <= set(service.methods_by_name)
    assert stubs.folder.parent == grpc_stubs.OUT_DIR
    rel = stubs.folder.relative_to(ROOT).as_posix()
    tracked = subprocess.run(["git", "ls-files", rel], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, timeout=60).returncode
    assert tracked == "" and ignored == 0


def test_a_changed_proto_is_another_fingerprint():
    sources = grpc_stubs.jar_sources(grpc_stubs.frontend_jar())
    proto = f"{grpc_stubs.PACKAGE}/inference.proto"
    changed = {**sources, proto: sources[proto] + b"\n"}
    assert grpc_stubs.fingerprint(changed) != grpc_stubs.fingerprint(sources)
