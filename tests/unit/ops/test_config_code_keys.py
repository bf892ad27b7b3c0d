"""config.properties keys that make TorchServe run code are refused when they come from a file
(a model's storage, a mounted ConfigMap, `serve start --config X`), read as Java reads the file
(a key spelt to slip past splitting lines on '=' too); `serve start` says so in one line per key
and exits 2. Only the operator's command line (`--allow-code-key KEY`) admits one. The shipped
configs pass, and the properties written for TorchServe read the same by Java and by its Python
launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ts.model_server import load_properties as launcher_reads

from handler.settings import ConfigError
from scripts import repo
from scripts.ops import serve
from scripts.ops.server_config import read_properties, write_properties
from tests.support.servers import ROOT, config_with

SHIPPED = ["config.properties", "config/kserve/config.properties",
           "deploy/overlays/kubernetes/config.properties"]
# One line added to the shipped config.properties, and the key the refusal must name.
CODE_LINES = {
    "system_metrics_cmd=/tmp/x.py": "system_metrics_cmd",
    "vmargs=-javaagent:/tmp/x.jar": "vmargs",
    "vmargs=-Xmx1g -XX:OnError=/tmp/x.sh": "vmargs",
    "vmargs=-Xmx1g -XX:OnOutOfMemoryError=/tmp/x.sh": "vmargs",
    "vmargs=-XX:TieredStopAtLevel=1 -Djava.class.path=/tmp": "vmargs",
    "plugins_path=/tmp/plugins": "plugins_path",
    "install_py_dep_per_model=true": "install_py_dep_per_model",
    "install_py_dep_per_model=TRUE": "install_py_dep_per_model",
    "model_server_home=/tmp/ts_home": "model_server_home",
    "cpu_launcher_enable=true": "cpu_launcher_enable",
    "cpu_launcher_args=--use_logical_core": "cpu_launcher_args",
    "enable_envvars_config=true": "enable_envvars_config",
}
# The same key as Java's Properties reads it, spelt so that splitting lines on '=' misses it.
SMUGGLED = {
    "colon": "system_metrics_cmd:/tmp/x.py",
    "whitespace": "system_metrics_cmd    /tmp/x.py",
    "continued key": "system_metrics_\\\n    cmd=/tmp/x.py",
    "escaped letter": "system_metrics_\\u0063md=/tmp/x.py",
}


def derive(config: Path, allow: frozenset[str] = frozenset()) -> dict[str, str]:
    return serve.derived_properties(config, serve.DEFAULT_PORTS, "m=m.mar", repo.MODEL_STORE,
                                    allow_code_keys=allow)


@pytest.mark.parametrize("line", sorted(CODE_LINES))
def test_a_code_key_from_a_file_is_refused(tmp_path, line):
    key = CODE_LINES[line]
    with pytest.raises(ConfigError) as info:
        derive(config_with(tmp_path, line))
    assert f"evil.properties: {key}" in str(info.value) and "--allow-code-key" in str(info.value)


@pytest.mark.parametrize("how", sorted(SMUGGLED))
def test_a_smuggled_code_key_is_read_as_java_reads_it_and_refused(tmp_path, how):
    config = config_with(tmp_path, SMUGGLED[how])
    assert read_properties(config)["system_metrics_cmd"] == "/tmp/x.py"
    with pytest.raises(ConfigError, match="system_metrics_cmd"):
        derive(config)


def test_the_operator_may_allow_a_code_key_on_the_command_line(tmp_path):
    config = config_with(tmp_path, "system_metrics_cmd=/tmp/x.py")
    assert derive(config, frozenset({"system_metrics_cmd"}))["system_metrics_cmd"] == "/tmp/x.py"
    with pytest.raises(ConfigError, match="unknown key"):  # a misspelt allowance is no allowance
        derive(config, frozenset({"system_metric_cmd"}))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_configs_pass_with_their_vmargs(name):
    props = derive(ROOT / name)
    assert props["vmargs"] == "-XX:TieredStopAtLevel=1 -Xmx1g -XX:+ExitOnOutOfMemoryError"
    assert props["install_py_dep_per_model"] == "false"


def test_serve_start_refuses_with_one_line_per_key_and_exit_2(tmp_path):
    config = config_with(tmp_path, "system_metrics_cmd=/tmp/x.py\nplugins_path=/tmp/p")
    proc = subprocess.run([sys.executable, "-m", "scripts.ops.serve", "start", "--config", str(config),
                           "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), proc.stderr
    assert "system_metrics_cmd" in lines[0] + lines[1] and "plugins_path" in lines[0] + lines[1]


def test_written_properties_read_the_same_by_java_and_by_torchserves_launcher(tmp_path):
    props = derive(ROOT / "config.properties")
    written = write_properties(tmp_path / "config.properties", props)
    assert read_properties(written) == props
    assert launcher_reads(str(written)) == props  # TorchServe's Python side reads vmargs from it
    for bad in ("a\\b", "a\nb", " lead", "é"):
        with pytest.raises(ConfigError, match="job_queue_size"):
            write_properties(tmp_path / "bad.properties", {**props, "job_queue_size": bad})
