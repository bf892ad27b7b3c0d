"""The one reader of a server's config.properties and of its key_file.json.

Every tool that talks to a server (serve, manage, healthcheck, client, loadtest, bench) finds
it through its working directory: `config.properties` there gives the addresses, and
`key_file.json` there the bearer keys TorchServe writes at start and rewrites when a key is
renewed, so keys are re-read whenever the file changes.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from handler.settings import check_keys

CONFIG_FILE = "config.properties"
KEY_FILE = "key_file.json"
# Keys TorchServe 0.12 reads from config.properties (its frontend's ConfigManager, plus `vmargs`
# and `plugins_path`, which its Python launcher reads).
TORCHSERVE_KEYS = frozenset({
    "inference_address", "management_address", "metrics_address", "grpc_inference_address",
    "grpc_management_address", "grpc_inference_port", "grpc_management_port", "enable_grpc_ssl",
    "model_store", "workflow_store", "load_models", "models", "model_server_home",
    "number_of_netty_threads", "netty_client_threads", "default_workers_per_model", "job_queue_size",
    "async_logging", "default_response_timeout", "default_startup_timeout", "unregister_model_timeout",
    "number_of_gpu", "metrics_config", "metrics_mode", "enable_metrics_api", "disable_system_metrics",
    "system_metrics_cmd", "model_metrics_auto_detect", "metric_time_interval", "blacklist_env_vars",
    "default_service_handler", "service_envelope", "max_request_size", "max_response_size",
    "limit_max_image_pixels", "allowed_urls", "use_env_allowed_urls", "install_py_dep_per_model",
    "enable_envvars_config", "keystore", "keystore_pass", "keystore_type", "certificate_file",
    "private_key_file", "cors_allowed_origin", "cors_allowed_methods", "cors_allowed_headers",
    "decode_input_request", "initial_worker_port", "initial_distribution_port",
    "cpu_launcher_enable", "cpu_launcher_args", "ipex_enable", "ipex_gpu_enable",
    "disable_token_authorization", "enable_model_api", "token_expiration_min",
    "ts_open_inference_protocol", "ts_header_key_sequence_id", "ts_header_key_sequence_start",
    "ts_header_key_sequence_end", "use_native_io", "io_ratio", "prefer_direct_buffer",
    "cpp_log_config", "torchelastic_ts", "vmargs", "plugins_path",
})
# TorchServe's answer to a missing, wrong or expired bearer key (HTTP 400 in 0.12).
AUTH_REFUSED = "Token Authorization failed"
# How long a client waits before resending a request whose key was just renewed: TorchServe
# drops the old key before it rewrites key_file.json.
KEY_RENEWAL_WAIT_S = 0.2
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
DEFAULT_ADDRESSES = ("http://127.0.0.1:8080", "http://127.0.0.1:8081", "http://127.0.0.1:8082")


def read_properties(path: str | Path, strict: bool = True) -> dict[str, str]:
    """key=value lines of a Java properties file (comments and blank lines skipped). Strict:
    a key TorchServe does not know is an error naming the key and the file."""
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    if strict:
        check_keys(props, TORCHSERVE_KEYS, str(path))
    return props


def addresses(workdir: str | Path) -> tuple[str, str, str]:
    """(inference, management, metrics) base URLs of the server whose working directory this is."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    return tuple(props.get(k, d) for k, d in zip(ADDRESS_KEYS, DEFAULT_ADDRESSES))


def read_keys(key_file: str | Path) -> dict[str, str]:
    """{'inference': ..., 'management': ..., 'API': ...} from TorchServe's key_file.json."""
    doc = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in doc.items() if isinstance(entry, dict) and "key" in entry}


def auth_refused(status: int, body: str) -> bool:
    """Whether a response is TorchServe refusing the bearer key: re-read the key file, resend."""
    return status in (400, 401) and AUTH_REFUSED in body


@dataclass
class KeyFile:
    """The bearer keys of key_file.json, re-read only when the file changes (size or mtime): safe
    to call per request from many threads."""

    path: Path | None

    def __post_init__(self) -> None:
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def key(self, api: str) -> str | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._keys.get(api)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._keys, self._stamp = read_keys(self.path), stamp
                except (OSError, ValueError, KeyError):
                    pass  # being rewritten: keep the previous keys, retry on the next call
        return self._keys.get(api)

    def headers(self, api: str) -> dict[str, str]:
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}
