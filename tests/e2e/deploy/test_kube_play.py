"""The Kubernetes overlay's pod run for real by `podman kube play` (scripts/deploy/kube_play.py)
against the image `make test` built: ready through the manifest's own startup and readiness
probes within a bound, the sample photos classified right, uid 1000, no privileges, the root
filesystem read-only but for its emptyDir, and nothing left after `kube play --down`, which runs
whatever happens (the fixture's finally)."""

from __future__ import annotations

import os

import pytest

from scripts.deploy import kube_play
from scripts.packaging.sample_photos import EXPECTED_TOP1
from tests.support.container import container_spec, require_image

# Measured: 30 s from `kube play` to ready at load average 5 on 2 cores (the probes' own periods
# included). The manifest's startupProbe allows 36 x 5 s = 180 s before the kubelet would restart
# the container; past this bound something is wrong, not slow.
READY_BOUND_S = 120


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    box = kube_play.prepare(tmp_path_factory.mktemp("kube_play"),
                            f"image-classifier-kube-{os.getpid()}", require_image())
    try:
        kube_play.play(box, require_image())
        kube_play.wait_ready(box, timeout=READY_BOUND_S + 60)
        yield box
    finally:
        kube_play.down(box)


@pytest.mark.e2e
def test_ready_through_its_own_readiness_probe(pod):
    manifest = container_spec(kube_play.rendered()[0])
    assert pod.probes["readiness"].command == manifest["readinessProbe"]["exec"]["command"]
    assert pod.ready_s < READY_BOUND_S, pod.attempts
    assert pod.attempts[0].code != 0, pod.attempts  # the probe judged a pod not yet ready
    last = pod.attempts[-1]
    assert (last.probe, last.code) == ("readiness", 0), pod.attempts
    assert kube_play.liveness(pod) == "healthy"  # podman's healthcheck: the livenessProbe


@pytest.mark.e2e
def test_prediction_top1(pod):
    results = kube_play.predict(pod, kube_play.pod_key(pod))
    assert set(results) == set(EXPECTED_TOP1)
    for name, (status, top1) in results.items():
        assert status == 200 and top1 in EXPECTED_TOP1[name], (name, status, top1)


@pytest.mark.e2e
def test_runs_as_uid_1000(pod):
    assert pod.state()["Config"]["User"] == "1000:1000"
    assert kube_play.process_uids(pod) == {1000}


@pytest.mark.e2e
def test_no_privileges(pod):
    assert kube_play.privileges(pod) == kube_play.PRIVILEGES


@pytest.mark.e2e
def test_root_filesystem_read_only(pod):
    assert pod.state()["HostConfig"]["ReadonlyRootfs"] is True
    said = kube_play.write_attempts(pod)
    for path in kube_play.READ_ONLY_PATHS:
        assert "Read-only file system" in said[path], (path, said[path])
    assert said["/tmp/probe"] == ""  # the emptyDir: the one writable place


@pytest.mark.e2e
def test_down_removes_the_pod(pod):  # last: the fixture's finally removes it again, harmlessly
    there = kube_play.leftovers(pod)
    assert f"pod {pod.pod}" in there and f"volume {pod.name}-tmp" in there, there
    assert kube_play.down(pod) == []
    assert pod.podman("pod", "exists", pod.pod).returncode == 1
