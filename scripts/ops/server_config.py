"""The one reader of a server's config.properties and of its key_file.json.

Every tool that talks to a server (serve, manage, healthcheck, client, loadtest, bench) finds
it through its working directory: `config.properties` there gives the addresses, and
`key_file.json` there the bearer keys TorchServe writes at start and rewrites when a key is
renewed, so keys are re-read whenever the file changes (KeyFile: the client library's
KeySource, every kind of key).
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import javaproperties
from image_classifier_client import keys

from handler.settings import ConfigError, check_keys

CONFIG_FILE = "config.properties"
KEY_FILE = "key_file.json"
# key_file.json: {"inference": {"key": ..., "expiration time": ISO}, "management": {...},
# "API": {"key": ...}}; the API key does not expire.
KEY_KINDS = ("inference", "management", "API")
EXPIRY_FIELD = "expiration time"
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
# Keys that make TorchServe run code of the config's choosing, and why (read in its 0.12 jar's
# ConfigManager, WorkerLifeCycle, ModelManager and its Python launcher, ts/model_server.py). From a
# file they are refused: a config.properties may come with a model (KServe's storage) or from a
# ConfigMap; only the operator's command line admits one (serve start --allow-code-key KEY).
CODE_KEYS = {
    "system_metrics_cmd": "is a command the frontend runs every metric_time_interval",
    "plugins_path": "puts jars on the frontend's class path",
    "model_server_home": "is where the workers' ts/model_service_worker.py is run from",
    "cpu_launcher_args": "are arguments for the workers' launcher command",
    "vmargs": "are flags of the frontend's JVM (-javaagent, -XX:OnError run code)",
    "install_py_dep_per_model": "pip-installs each archive's requirements.txt when true",
    "cpu_launcher_enable": "starts the workers through a launcher command when true",
    "enable_envvars_config": "lets TS_* environment variables set every key here, unchecked",
}
# The code keys a file may set to "false" (TorchServe reads any other spelling of true as true).
CODE_SWITCHES = ("install_py_dep_per_model", "cpu_launcher_enable", "enable_envvars_config")
# The JVM flags a file may give in vmargs: heap, stack, compiler, collector and the OOM exit.
VM_FLAGS = re.compile(
    r"-Xm[sx]\d+[kmgKMG]?|-Xss\d+[kmgKMG]?|-XX:TieredStopAtLevel=[0-4]"
    r"|-XX:[+-](?:ExitOnOutOfMemoryError|UseG1GC|UseSerialGC|UseParallelGC|UseContainerSupport)"
    r"|-XX:(?:Max|Min|Initial)RAMPercentage=\d+(?:[.]\d+)?|-XX:ActiveProcessorCount=\d+"
    r"|-XX:(?:MaxDirectMemorySize|MaxMetaspaceSize)=\d+[kmgKMG]?")
# allowed_urls: the one form we write and accept, `(?-i:file://STORE/[^/%?#]+[.]mar)`: the
# archives directly in one folder, spelled so that it means the same to Python's re as to
# TorchServe. TorchServe 0.12 matches each comma-separated pattern against the whole URL,
# case-insensitively (ArchiveUtils.validateURL); `(?-i:...)` turns that off (/MODEL_STORE is
# another folder). A plain file name (load_models, `url=NAME.mar`) is never matched: it is read
# from the store. A file:// URL that matches is copied into the workflow store (POST /workflows)
# before TorchServe looks for `..` in it, and the copy stays whatever follows; seen on 0.12:
# `STORE/.*` let `file://STORE/../../tmp/x.war` in (then `url=x.war` loads it from the store),
# and `STORE/[^/]+[.]mar` let `file://STORE/%2E%2E%2F...%2Fx.mar` in (Java decodes %2F in a
# file URL). No backslash anywhere: java.util.Properties drops it from the file.
ARCHIVES_IN = "/[^/%?#]+[.]mar"
_PLAIN = re.compile(r"[A-Za-z0-9/_~@:=-]")
_QUOTED = ".+*?$(){}|"  # each written as a one-character class, [.]
_STORE_PATTERN = re.compile(
    r"\(\?-i:file://((?:[A-Za-z0-9/_~@:=-]|\[[.+*?$(){}|]\])+)" + re.escape(ARCHIVES_IN) + r"\)")
# Where TorchServe listens when config.properties does not say (and where ours says it does):
# inference, management, metrics over HTTP; gRPC inference and management.
LOOPBACK = "127.0.0.1"
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
DEFAULT_PORTS = (8080, 8081, 8082)
GRPC_KEYS = ("grpc_inference_port", "grpc_management_port")
GRPC_DEFAULT_PORTS = (7070, 7071)


def loopback_url(port: int) -> str:
    """The HTTP base URL of a port on the loopback address."""
    return f"http://{LOOPBACK}:{port}"


DEFAULT_ADDRESSES = tuple(loopback_url(port) for port in DEFAULT_PORTS)
# An address on a Unix socket: `management_address=unix:/PATH` (the replicas behind the balancer).
UNIX_SCHEME = "unix:"


def read_properties(path: str | Path, strict: bool = True) -> dict[str, str]:
    """A Java properties file as TorchServe's frontend reads it (`=`, `:` or whitespace
    separators, escapes, continued lines; the last of a repeated key wins). Strict: a key
    TorchServe does not know is an error naming the key and the file."""
    with open(path, "rb") as f:  # bytes: read as ISO-8859-1, as java.util.Properties does
        props = javaproperties.load(f)
    if strict:
        check_keys(props, TORCHSERVE_KEYS, str(path))
    return props


def write_properties(path: Path, props: dict[str, str]) -> Path:
    """`key=value` lines that TorchServe's frontend (java.util.Properties) and its Python launcher
    (which reads vmargs and plugins_path by splitting on '=') both read as `props`. Java's own
    escaping would not do: the launcher would pass `-XX\\:...` to the JVM. A value neither reads
    alike (a backslash, a line break, surrounding space, non-ASCII) is an error naming the key."""
    lines = []
    for key, value in props.items():
        line = f"{key}={value}"
        if not line.isascii() or value != value.strip() or javaproperties.loads(line) != {key: value}:
            raise ConfigError(f"{path}: {key}={value!r} cannot be written so that TorchServe's "
                              "frontend and launcher read it alike: drop the backslash, line "
                              "break, surrounding space or non-ASCII character")
        lines.append(line + "\n")
    path.write_text("".join(lines))
    return path


def code_key_problems(props: dict[str, str], allowed: frozenset[str] = frozenset()) -> dict[str, str]:
    """Each key in `props` that would make TorchServe run code (CODE_KEYS) and is not in
    `allowed`, with what is wrong: a switch set to anything but false, a vmargs flag outside
    VM_FLAGS, any value of the others."""
    problems = {}
    for key, why in CODE_KEYS.items():
        value = props.get(key)
        if key in allowed or value is None:
            continue
        if key == "vmargs":
            flags = [flag for flag in value.split() if not VM_FLAGS.fullmatch(flag)]
            if flags:
                problems[key] = (f"vmargs flag {flags[0]!r} is not a JVM memory, compiler or "
                                 f"collector flag; vmargs {why}")
        elif key not in CODE_SWITCHES or value != "false":
            problems[key] = f"{key}={value} {why}"
    return problems


def check_code_keys(props: dict[str, str], where: str, allowed: frozenset[str] = frozenset()) -> None:
    """Raise ConfigError with one line per code key `props` (read from `where`) sets, each
    naming what to do; `allowed`: the keys the operator admitted on the command line."""
    check_keys(allowed, CODE_KEYS, "--allow-code-key")
    problems = code_key_problems(props, allowed)
    if problems:
        raise ConfigError("\n".join(
            f"{where}: {problem}: remove it, or pass --allow-code-key {key} to serve start "
            "if you wrote it yourself" for key, problem in problems.items()))


def store_urls(model_store: str | Path) -> str:
    """The allowed_urls value that admits only the archives directly in `model_store` (absolute)."""
    folder = posixpath.normpath(str(model_store))
    if not folder.startswith("/"):
        raise ValueError(f"the model store must be an absolute path, not {folder!r}")
    spelt = []
    for char in folder:
        if _PLAIN.fullmatch(char):
            spelt.append(char)
        elif char in _QUOTED:
            spelt.append(f"[{char}]")
        else:
            raise ValueError(f"allowed_urls cannot name {folder!r}: {char!r} has no spelling that "
                             "java.util.Properties and both regex dialects read alike")
    return f"(?-i:file://{''.join(spelt)}{ARCHIVES_IN})"


def store_of(pattern: str) -> str | None:
    """The folder a store_urls() pattern names, or None for any other pattern."""
    found = _STORE_PATTERN.fullmatch(pattern)
    if not found:
        return None
    return re.sub(r"\[(.)\]", r"\1", found.group(1))


def url_problems(props: dict[str, str]) -> list[str]:
    """What in a config lets TorchServe fetch an archive from anywhere but its model store:
    allowed_urls missing (TorchServe's default admits any file and any http(s) URL), a pattern
    other than store_urls(the model store), the environment allowed to replace it. A relative
    model_store (config.properties, resolved where the app is installed: the image's folder)
    must be named by a pattern for an absolute folder ending in it; `serve` derives the
    absolute one."""
    if props.get("use_env_allowed_urls", "false").strip().lower() != "false":
        return ["use_env_allowed_urls lets the environment replace allowed_urls"]
    urls = props.get("allowed_urls")
    if not urls:
        return ["allowed_urls is not set: TorchServe's default admits any file:// and http(s) URL"]
    store = posixpath.normpath(props.get("model_store") or ".")
    example = store_urls(store if store.startswith("/") else "/STORE")
    problems = []
    for pattern in urls.split(","):  # TorchServe splits on every comma, then trims nothing
        folder = store_of(pattern)
        if folder is None:
            problems.append(f"allowed_urls pattern {pattern!r} admits more than the archives of "
                            f"one folder: write {example!r}")
        elif folder != posixpath.normpath(folder) or not (
                folder == store if store.startswith("/") else folder.endswith("/" + store)):
            problems.append(f"allowed_urls names {folder}, not the model store {store}")
    return problems


def addresses(workdir: str | Path) -> tuple[str, str, str]:
    """(inference, management, metrics) base URLs of the server whose working directory this is."""
    props = read_properties(Path(workdir) / CONFIG_FILE)
    return tuple(props.get(k, d) for k, d in zip(ADDRESS_KEYS, DEFAULT_ADDRESSES))


def is_unix(address: str) -> bool:
    return address.startswith(UNIX_SCHEME)


def socket_path(address: str) -> Path:
    """`unix:/PATH` -> /PATH."""
    return Path(address.removeprefix(UNIX_SCHEME))


class ModelChoiceError(ValueError):
    """The model a tool is to talk to is not given and cannot be told: several are served."""


def served_models(workdir: str | Path) -> list[str]:
    """The model names the server of `workdir` was started with, each once, in order: its
    config.properties' load_models ("NAME=FOLDER,..." as serve writes it; an item without a name
    is named after its file, as TorchServe names it). Read from the file, not asked of the
    server: a model that failed to register is still one the server should serve."""
    text = read_properties(Path(workdir) / CONFIG_FILE).get("load_models", "").strip()
    if text == "all" or not text:
        raise ModelChoiceError(f"{Path(workdir) / CONFIG_FILE} does not name its models "
                               f"(load_models={text}): name the model with --model")
    names = [item.split("=", 1)[0].strip() if "=" in item else Path(item.strip()).name.removesuffix(".mar")
             for item in text.split(",") if item.strip()]
    return list(dict.fromkeys(names))


def chosen_model(workdir: str | Path, model: str | None) -> str:
    """`model` where given, else the one model the server of `workdir` serves; ModelChoiceError
    listing them where it serves several."""
    if model:
        return model
    names = served_models(workdir)
    if len(names) != 1:
        raise ModelChoiceError(f"this server serves {len(names)} models ({', '.join(names)}): "
                               "name one with --model")
    return names[0]


def write_private(path: str | Path, text: str) -> Path:
    """Write `text` to `path` (mode 0600) whole or not at all: a temporary file in the same folder,
    flushed to disk, then renamed over `path`. A reader sees the old file or the new one, never a
    part; a full disk fails here and leaves the old file as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_key_file(key_file: str | Path) -> dict[str, dict]:
    """key_file.json as TorchServe writes it, every kind of key in it (KEY_KINDS); ValueError for
    one that is not whole: TorchServe rewrites the file in place when a key is renewed, and a
    full disk leaves it truncated (or empty) while TorchServe already uses the new key."""
    return keys.read_key_file(key_file, KEY_KINDS)


def read_keys(key_file: str | Path) -> dict[str, str]:
    """{'inference': ..., 'management': ..., 'API': ...} from TorchServe's key_file.json."""
    return {kind: entry["key"] for kind, entry in read_key_file(key_file).items() if kind in KEY_KINDS}


def first_expiry(doc: dict[str, dict]) -> datetime | None:
    """When the first of the expiring keys of a read_key_file() document expires (None: none)."""
    expiries = [datetime.fromisoformat(entry[EXPIRY_FIELD]) for entry in doc.values()
                if isinstance(entry, dict) and EXPIRY_FIELD in entry]
    return min(expiries) if expiries else None


class KeyFile(keys.KeySource):
    """The bearer keys of key_file.json, every kind (KEY_KINDS), re-read only when the file
    changes: safe to call per request from many threads. A file that does not read whole keeps
    the last good keys and is read again on the next call (the client library's KeySource)."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(path, required=KEY_KINDS)

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until the first expiring key of the last good file expires (None: none does,
        or no file was read whole yet)."""
        expiry = first_expiry(self.document())
        return None if expiry is None else (expiry - (now or datetime.now(UTC))).total_seconds()
