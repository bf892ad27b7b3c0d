"""Run the Kubernetes overlay's pod for real with `podman kube play`, against the local image.

    python -m scripts.deploy.kube_play                   # play, check, remove (make kube-play)
    python -m scripts.deploy.kube_play --keep            # leave the pod running afterwards
    python -m scripts.deploy.kube_play --down            # remove a pod --keep left

Steps, each printed: render deploy/overlays/kubernetes offline (`kubectl kustomize`, no cluster),
take its Deployment and the ConfigMap it mounts, adapt what kube play cannot take as is, play it,
wait until the pod is ready through the manifest's own startupProbe then readinessProbe, run
podman's healthcheck (the livenessProbe), send the sample photos for prediction and check the
top-1, check the processes run as uid 1000 with a read-only root filesystem, then `kube play
--down` (always, unless --keep) and check that no pod, container or volume is left.

Adaptations, all in `adapt()`; nothing else in the pod spec is changed:
- image: the overlay names the registry's (registry.example.com/...); here the local tag `make
  image` builds, with imagePullPolicy Never (podman's default for kube play, "newer", would ask
  a registry about it).
- replicas 2 -> 1: podman starts every replica as its own pod on this host, each publishing the
  same host ports and asking for 2 CPUs.
- ports: podman 4.3 publishes a containerPort without hostPort on the same host port on every
  interface; here each gets a free host port on 127.0.0.1 (hostIP, hostPort).
- names: the Deployment is named --name and its ConfigMap and emptyDir volume after it, so two
  runs side by side share no pod or volume (podman names volumes after them, host-wide).
- podman itself (not the spec): runtime runc and explicit ulimits, which this kind of host needs
  (docs/container.md); kube play takes no --ulimit, so they come in a containers.conf given by
  CONTAINERS_CONF for these podman calls only.

What podman 4.3 kube play does not take (its docs/kubernetes_support.md and
pkg/specgen/generate/kube/kube.go at v4.3.1):
- kinds: only Pod, Deployment, ConfigMap, Secret and PersistentVolumeClaim are played; the
  overlay's Service, HorizontalPodAutoscaler, NetworkPolicy, PodDisruptionBudget and Istio's
  PeerAuthentication and AuthorizationPolicy are not (this CLI does not pass them).
- readinessProbe and startupProbe: ignored (startupProbe from 4.4; readinessProbe in no
  version). Only the livenessProbe becomes podman's healthcheck, and without systemd podman
  cannot schedule it ("unable to get systemd connection to add healthchecks"): it runs only when
  `podman healthcheck run` is called. `podman pod inspect` has no readiness either. So this CLI
  runs the manifest's startupProbe and readinessProbe commands itself with `podman exec`, on
  their periodSeconds, timeoutSeconds and failureThreshold, as the kubelet would.
- pod fields: terminationGracePeriodSeconds (from 4.7; podman stops with its own 10 s),
  lifecycle.preStop, automountServiceAccountToken (there is no service account),
  securityContext.runAsNonRoot (runAsUser 1000 is applied), fsGroup, seccompProfile (podman
  applies its default seccomp profile anyway), emptyDir.sizeLimit (the volume is a host
  directory), resources.requests.cpu (no scheduler; the limits become cgroup limits), the
  Deployment's strategy. Labels and annotations are kept as metadata only: the
  sidecar.istio.io/inject label injects no sidecar (no Istio here), so nothing authenticates
  callers and the pod's config, as in the cluster, has token authorization off.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from scripts import repo
from scripts.deploy.validate import render
from scripts.ops.serve import free_ports
from scripts.packaging.sample_photos import EXPECTED_TOP1, jpeg_bytes, load_photos

OVERLAY = "kubernetes"
NAME = "image-classifier"
IMAGE_NAME = "localhost/image-classifier-service"
CONTAINER = "torchserve"  # the container's name in deployment.yaml
APP_DIR = "/home/model-server/app"
KEY_FILE = "run/key_file.json"
# runc: crun refuses hybrid cgroup v1 layouts; ulimits: podman's defaults fail with "setrlimit
# RLIMIT_NPROC" (docs/container.md). kube play has no flags for either.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""
# Outside /tmp, each a place a writable root would let uid 1000 write (its home) or not.
READ_ONLY_PATHS = ("/home/model-server/probe", f"{APP_DIR}/probe", "/probe")


def local_image() -> str:
    version = tomllib.loads((repo.ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"{IMAGE_NAME}:{version}"


def rendered() -> tuple[dict, list[dict]]:
    """The overlay's Deployment and its ConfigMaps, rendered offline (files only, no cluster)."""
    docs = render(OVERLAY)
    return (next(d for d in docs if d["kind"] == "Deployment"),
            [d for d in docs if d["kind"] == "ConfigMap"])


def adapt(deployment: dict, configmaps: list[dict], name: str, image: str,
          host_ports: dict[int, int]) -> list[dict]:
    """Only what kube play cannot take as is (the module's docstring says why, one by one)."""
    deployment, configmaps = copy.deepcopy(deployment), copy.deepcopy(configmaps)
    deployment["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    for container in pod["containers"]:
        container["image"], container["imagePullPolicy"] = image, "Never"
        for port in container.get("ports", []):
            port["hostIP"] = "127.0.0.1"
            port["hostPort"] = host_ports.get(port["containerPort"], port["containerPort"])
    renamed = {}
    for volume in pod.get("volumes", []):
        volume["name"] = renamed.setdefault(volume["name"], f"{name}-{volume['name']}")
        if "configMap" in volume:
            old = volume["configMap"]["name"]
            volume["configMap"]["name"] = volume["name"]
            for cm in configmaps:
                if cm["metadata"]["name"] == old:
                    cm["metadata"]["name"] = volume["name"]
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed[mount["name"]]
    return [*configmaps, deployment]


@dataclass
class Probe:
    """One exec probe of the manifest, as the kubelet reads it."""
    command: list[str]
    period_s: int = 10
    timeout_s: int = 1
    failure_threshold: int = 3

    @classmethod
    def of(cls, spec: dict) -> Probe:
        return cls(spec["exec"]["command"], spec.get("periodSeconds", 10),
                   spec.get("timeoutSeconds", 1), spec.get("failureThreshold", 3))


@dataclass
class Attempt:
    probe: str
    at_s: float
    code: int
    output: str


@dataclass
class Pod:
    name: str  # the Deployment's; podman's pod is NAME-pod-0
    spec: Path  # the adapted YAML kube play ran (and --down reads)
    conf: Path  # the containers.conf of these podman calls
    host_ports: dict[int, int]
    probes: dict[str, Probe]
    attempts: list[Attempt] = field(default_factory=list)
    ready_s: float | None = None  # from `kube play` returning to the readinessProbe's success

    @property
    def pod(self) -> str:
        return f"{self.name}-pod-0"

    @property
    def container(self) -> str:
        return f"{self.pod}-{CONTAINER}"

    @property
    def volumes(self) -> list[str]:
        docs = list(yaml.safe_load_all(self.spec.read_text()))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        return [v["name"] for v in deployment["spec"]["template"]["spec"].get("volumes", [])]

    def podman(self, *args: str, timeout: float = 120, check: bool = False,
               stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        out = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True,
                             text=True, timeout=timeout, env=env, input=stdin)
        if check and out.returncode:
            raise RuntimeError(f"podman {' '.join(args)}: exit {out.returncode}: "
                               f"{out.stderr.strip()[-2000:]}")
        return out

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.podman("exec", self.container, *cmd, timeout=timeout)

    def state(self) -> dict:
        out = self.podman("inspect", self.container, check=True).stdout
        return json.loads(out)[0]

    def logs(self) -> str:
        return self.podman("logs", self.container).stdout[-4000:]


def prepare(workdir: Path, name: str = NAME, image: str | None = None) -> Pod:
    """The adapted spec and podman's settings written under `workdir`, nothing started."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployment, configmaps = rendered()
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == CONTAINER)
    inside = [p["containerPort"] for p in container.get("ports", [])]
    host_ports = dict(zip(inside, free_ports(len(inside))))
    docs = adapt(deployment, configmaps, name, image or local_image(), host_ports)
    spec, conf = workdir / f"{name}.yaml", workdir / "containers.conf"
    spec.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    conf.write_text(CONTAINERS_CONF)
    probes = {kind: Probe.of(container[f"{kind}Probe"]) for kind in ("startup", "readiness")
              if f"{kind}Probe" in container}
    return Pod(name, spec, conf, host_ports, probes)


def play(pod: Pod, image: str | None = None) -> str:
    """`podman kube play` the adapted spec (a pod left by an aborted run removed first)."""
    image = image or local_image()
    if not shutil.which("podman"):
        raise RuntimeError("kube play needs podman (docker has no equivalent): apt-get install podman runc")
    if pod.podman("image", "exists", image).returncode:
        raise RuntimeError(f"image {image} is missing: run `make image`")
    down(pod)
    return pod.podman("kube", "play", str(pod.spec), timeout=300, check=True).stdout.strip()


def run_probe(pod: Pod, kind: str, t0: float) -> Attempt:
    probe = pod.probes[kind]
    try:
        out = pod.exec(*probe.command, timeout=probe.timeout_s)
        code, text = out.returncode, (out.stdout + out.stderr).strip()
    except subprocess.TimeoutExpired:
        code, text = -1, f"timed out after {probe.timeout_s} s"
    attempt = Attempt(kind, time.monotonic() - t0, code, text[-300:])
    pod.attempts.append(attempt)
    print(f"[kube-play]   {kind}Probe at {attempt.at_s:5.1f} s: exit {code}: {attempt.output}",
          flush=True)
    return attempt


def wait_ready(pod: Pod, timeout: float = 300) -> float:
    """Seconds until the readinessProbe succeeds, after the startupProbe did (within its
    failureThreshold, as the kubelet would before restarting the container); the container must
    keep running throughout."""
    t0 = time.monotonic()
    for kind in ("startup", "readiness"):
        if kind not in pod.probes:
            continue
        probe, failures = pod.probes[kind], 0
        while True:
            state = pod.state()["State"]
            if not state.get("Running"):
                raise RuntimeError(f"{pod.container} is {state.get('Status')}:\n{pod.logs()}")
            started = time.monotonic()
            if run_probe(pod, kind, t0).code == 0:
                break
            failures += 1
            if kind == "startup" and failures >= probe.failure_threshold:
                raise TimeoutError(f"startupProbe failed {failures} times:\n{pod.logs()}")
            if started + probe.period_s - t0 > timeout:
                raise TimeoutError(f"not ready after {timeout:.0f} s:\n{pod.logs()}")
            # periodSeconds from one probe's start to the next, as the kubelet counts it
            time.sleep(max(0.0, started + probe.period_s - time.monotonic()))
    pod.ready_s = time.monotonic() - t0
    return pod.ready_s


def liveness(pod: Pod) -> str:
    """podman's own healthcheck (the livenessProbe), run once, and the state podman records."""
    pod.podman("healthcheck", "run", pod.container, timeout=60)
    return pod.state()["State"].get("Health", {}).get("Status", "none")


def pod_key(pod: Pod) -> str | None:
    """The inference key from inside the pod, or None when the pod's config has token
    authorization off (no key file is written). Kept in memory: never on a command line."""
    out = pod.exec("cat", KEY_FILE)
    return json.loads(out.stdout)["inference"]["key"] if out.returncode == 0 else None


def predict(pod: Pod, key: str | None, model: str = repo.DEFAULT_MODEL) -> dict[str, tuple[int, int]]:
    """{photo: (HTTP status, top-1 index or -1)} for the sample photos with an expected top-1."""
    url = f"http://127.0.0.1:{pod.host_ports[8080]}/predictions/{model}"
    headers = {"Content-Type": "image/jpeg", **({"Authorization": f"Bearer {key}"} if key else {})}
    results = {}
    for name, arr in load_photos().items():
        if name in EXPECTED_TOP1:
            resp = requests.post(url, data=jpeg_bytes(arr), headers=headers, timeout=60)
            top1 = resp.json()["predictions"][0]["index"] if resp.status_code == 200 else -1
            results[name] = (resp.status_code, top1)
    return results


def process_uids(pod: Pod) -> set[int]:
    """The real uid of every process in the container, from /proc."""
    out = pod.exec("sh", "-c", "cat /proc/[0-9]*/status 2>/dev/null")
    return {int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("Uid:")}


# The container securityContext as the kernel sees it in the server's process: no privilege
# escalation, every capability dropped, a seccomp filter (podman's default profile).
PRIVILEGES = {"NoNewPrivs": "1", "CapEff": "0000000000000000", "Seccomp": "2"}


def privileges(pod: Pod) -> dict[str, str]:
    """PRIVILEGES' fields of the container's first process, from /proc/1/status."""
    out = pod.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: fields.get(k, "").strip() for k in PRIVILEGES}


def write_attempts(pod: Pod) -> dict[str, str]:
    """{path: what `touch` said} for paths outside /tmp, and /tmp itself ("" = written)."""
    said = {}
    for path in (*READ_ONLY_PATHS, "/tmp/probe"):
        out = pod.exec("touch", path)
        said[path] = out.stderr.strip() if out.returncode else ""
    return said


def down(pod: Pod) -> list[str]:
    """`podman kube play --down`, then the ConfigMap volumes it leaves; what is still there."""
    pod.podman("kube", "play", "--down", str(pod.spec), timeout=120)
    for volume in pod.volumes:
        if pod.podman("volume", "exists", volume).returncode == 0:
            pod.podman("volume", "rm", "-f", volume)
    return leftovers(pod)


def leftovers(pod: Pod) -> list[str]:
    left = [f"pod {pod.pod}"] if pod.podman("pod", "exists", pod.pod).returncode == 0 else []
    if pod.podman("container", "exists", pod.container).returncode == 0:
        left.append(f"container {pod.container}")
    return left + [f"volume {v}" for v in pod.volumes
                   if pod.podman("volume", "exists", v).returncode == 0]


def step(message: str) -> None:
    print(f"[kube-play] {message}", flush=True)


def check(pod: Pod, timeout: float) -> list[str]:
    """Every step after the play; the problems found (empty: all good)."""
    problems = []
    step(f"waiting for {pod.container} to be ready through its startupProbe and readinessProbe")
    step(f"ready after {wait_ready(pod, timeout):.1f} s")
    health = liveness(pod)
    step(f"podman healthcheck (the livenessProbe): {health}")
    if health != "healthy":
        problems.append(f"livenessProbe: {health}")
    key = pod_key(pod)
    step("inference key read from inside the pod" if key else
         "no key file in the pod: token authorization is off in its config (as in the cluster)")
    for name, (status, top1) in predict(pod, key).items():
        good = status == 200 and top1 in EXPECTED_TOP1[name]
        step(f"prediction {name}: HTTP {status}, top-1 {top1} ({'ok' if good else 'WRONG'})")
        if not good:
            problems.append(f"prediction {name}: HTTP {status}, top-1 {top1}")
    uids = process_uids(pod)
    step(f"process uids: {sorted(uids)}")
    if uids != {1000}:
        problems.append(f"processes run as {sorted(uids)}, not only 1000")
    held = privileges(pod)
    step(f"privileges: {held}")
    if held != PRIVILEGES:
        problems.append(f"privileges {held}, expected {PRIVILEGES}")
    for path, said in write_attempts(pod).items():
        refused = "Read-only file system" in said
        step(f"write {path}: {said or 'written'}")
        if refused == path.startswith("/tmp/"):
            problems.append(f"write {path}: {said or 'written'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=local_image())
    parser.add_argument("--name", default=NAME, help="the Deployment's name (pod NAME-pod-0)")
    parser.add_argument("--workdir", type=Path, help="where the adapted YAML is written")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to ready")
    parser.add_argument("--keep", action="store_true", help="leave the pod running")
    parser.add_argument("--down", action="store_true", help="only remove the pod")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kube-play-") as scratch:
        return run(args, args.workdir or Path(scratch))


def run(args: argparse.Namespace, workdir: Path) -> int:
    pod = prepare(workdir, args.name, args.image)
    if args.down:
        left = down(pod)
        step(f"removed {pod.pod}" if not left else f"still there: {', '.join(left)}")
        return 1 if left else 0
    step(f"rendered deploy/overlays/{OVERLAY}, adapted for kube play: {pod.spec}")
    problems = []
    try:
        step(f"podman kube play ({args.image}, ports {pod.host_ports} on 127.0.0.1)")
        step(play(pod, args.image).replace("\n", " "))
        problems = check(pod, args.timeout)
    except (OSError, RuntimeError, subprocess.SubprocessError, requests.RequestException) as exc:
        problems = [f"{type(exc).__name__}: {exc}"]
    finally:
        if args.keep:
            step(f"left running: {pod.pod}; remove it with: python -m scripts.deploy.kube_play "
                 f"--down --name {pod.name}")
        else:
            left = down(pod)
            step(f"podman kube play --down: {'removed' if not left else 'LEFT ' + ', '.join(left)}")
            problems += [f"left after --down: {x}" for x in left]
    for line in problems:
        print(f"[kube-play] FAILED: {line}", file=sys.stderr)
    step("all checks passed" if not problems else f"{len(problems)} checks failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
