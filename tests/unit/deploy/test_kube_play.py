"""The Kubernetes overlay's pod adapted for `podman kube play` (scripts/deploy/kube_play.py),
checked offline: only the fields kube_play.adapt names change (image, pull policy, replicas, host
ports on loopback, names), and with them undone the rest is the rendered Deployment, field for
field."""

from __future__ import annotations

import copy

from scripts.deploy import kube_play
from tests.support.container import container_spec


def test_adapt_changes_only_what_kube_play_cannot_take():
    deployment, configmaps = kube_play.rendered()
    docs = kube_play.adapt(deployment, configmaps, "x", "localhost/i:1", {8080: 1234, 8082: 5678})
    adapted, cms = docs[-1], docs[:-1]
    c = container_spec(adapted)
    assert (c["image"], c["imagePullPolicy"], adapted["spec"]["replicas"]) == ("localhost/i:1", "Never", 1)
    assert [(p["containerPort"], p["hostIP"], p["hostPort"]) for p in c["ports"]] == [
        (8080, "127.0.0.1", 1234), (8082, "127.0.0.1", 5678)]
    assert [cm["metadata"]["name"] for cm in cms] == ["x-config"]
    assert cms[0]["data"] == configmaps[0]["data"]
    # Undo the adaptations: what remains must be the rendered Deployment, field for field.
    undone = copy.deepcopy(adapted)
    undone["metadata"]["name"], undone["spec"]["replicas"] = deployment["metadata"]["name"], 2
    u, original = container_spec(undone), container_spec(deployment)
    u["image"] = original["image"]
    del u["imagePullPolicy"]
    for port in u["ports"]:
        del port["hostIP"], port["hostPort"]
    names = {f"x-{v['name']}": v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for v in undone["spec"]["template"]["spec"]["volumes"]:
        v["name"] = names[v["name"]]
        if "configMap" in v:
            v["configMap"]["name"] = configmaps[0]["metadata"]["name"]
    for m in u["volumeMounts"]:
        m["name"] = names[m["name"]]
    assert undone == deployment
