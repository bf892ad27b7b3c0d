"""The artifact inspector: what is inside a .mar, where it came from, and whether it is intact.

Reads the provenance manifest (provenance.json) and the archiver's MAR-INF/MANIFEST.json, hashes
every file in the archive and compares it with the manifest. Exit status 0 when every hash
matches and nothing unlisted is in the archive, 1 otherwise, 2 when the archive is unreadable.

With --server, it also compares the archive with what a running server's worker loaded (a bare
process or a container): `GET /models/NAME?customized=true` on the management API answers the
sha256 of the manifest and of every file as verified at load. Exit status 0 when they are the
same, 1 when they differ, 2 when the server cannot be asked.

    python -m scripts.ops.inspect_mar model_store/efficientnet_lite0.mar
    python -m scripts.ops.inspect_mar model_store/efficientnet_lite0.mar --json
    python -m scripts.ops.inspect_mar model_store/efficientnet_lite0.mar \\
        --server http://127.0.0.1:8081 --key-file run/key_file.json
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import requests
import yaml

from handler import integrity, layout
from handler.provenance import sha256_stream
from handler.settings import HANDLER_DEFAULTS
from scripts import repo
from scripts.ops.pins import PIN_ENV
from scripts.ops.verified_copy import zip_problems


class Archive:
    """Read-only view of a .mar (zip) or an unpacked model directory (--archive-format no-archive)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.zip = None
        if not self.path.is_dir():
            # What a local-header reader (Java's, TorchServe's) would unpack must be what is shown.
            with open(self.path, "rb") as fh:
                if problems := zip_problems(fh):
                    raise ValueError("its local headers and central directory disagree: "
                                     + "; ".join(problems))
            self.zip = zipfile.ZipFile(self.path)

    def names(self) -> list[str]:
        """Every file of the archive but the archiver's own MAR-INF/MANIFEST.json: bytecode and
        anything else unlisted is reported, as a worker refuses it (handler/integrity.py)."""
        if self.zip:
            return sorted(e.filename for e in self.zip.infolist()
                          if not e.is_dir() and e.filename != layout.ARCHIVER_MANIFEST)
        return [name for name in integrity.present_files(self.path)
                if name != layout.ARCHIVER_MANIFEST and (self.path / name).is_file()]

    def open(self, name: str):
        return self.zip.open(name) if self.zip else open(self.path / name, "rb")

    def read(self, name: str) -> bytes:
        with self.open(name) as fh:
            return fh.read()

    def sha256(self, name: str) -> tuple[str, int]:
        with self.open(name) as fh:
            return sha256_stream(fh)


def inspect(path: Path) -> dict:
    """Everything the inspector knows about an archive, as a JSON-ready dict."""
    archive = Archive(path)
    names = archive.names()
    if layout.MANIFEST not in names:
        raise ValueError(f"{path} holds no {layout.MANIFEST}: it was not built by scripts.packaging.package")
    manifest = json.loads(archive.read(layout.MANIFEST))
    mar_manifest = _archiver_manifest(archive)
    listed = manifest.get("files", {})
    files, problems = [], []
    for name in names:
        if name == layout.MANIFEST:
            continue
        actual, size = archive.sha256(name)
        expected = listed.get(name, {}).get("sha256")
        status = "ok" if actual == expected else ("unlisted" if expected is None else "MISMATCH")
        if status != "ok":
            problems.append(f"{name}: {status}")
        files.append({"name": name, "bytes": size, "sha256": actual, "status": status})
    problems += [f"{name}: missing" for name in sorted(set(listed) - set(names))]
    handler_cfg = {}
    if layout.MODEL_CONFIG in names:
        handler_cfg = (yaml.safe_load(archive.read(layout.MODEL_CONFIG)) or {}).get("handler", {}) or {}
    labels_name = handler_cfg.get("labels", HANDLER_DEFAULTS["labels"])
    labels = json.loads(archive.read(labels_name)) if labels_name in names else {}
    return {
        "archive": str(path),
        "archive_bytes": path.stat().st_size if path.is_file() else sum(f["bytes"] for f in files),
        # Streamed: the archive of a large model need not fit in memory.
        "archive_sha256": Archive(path.parent).sha256(path.name)[0] if path.is_file() else None,
        "model": manifest.get("model", {}),
        "archiver": mar_manifest.get("model", {}) | {"createdOn": mar_manifest.get("createdOn")},
        "build": manifest.get("build", {}),
        "checkpoint": manifest.get("checkpoint", {}),
        "versions": manifest.get("versions", {}),
        "preprocessing": manifest.get("preprocessing", {}),
        "labels": {"file": labels_name, "count": len(labels)},
        "validation": manifest.get("validation", {}),
        "manifest_sha256": archive.sha256(layout.MANIFEST)[0],
        "files": files,
        "integrity": {"ok": not problems, "checked": len(files), "problems": problems},
    }


def running_description(management_url: str, model: str, key: str | None = None,
                        timeout: float = 30.0) -> dict:
    """The worker's description of what it loaded (handler.classifier.loaded_description)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = requests.get(f"{management_url.rstrip('/')}/models/{model}", params={"customized": "true"},
                        headers=headers, timeout=timeout)
    resp.raise_for_status()
    custom = resp.json()[0].get("customizedMetadata") or {}
    return json.loads(custom) if isinstance(custom, str) else custom


def compare_running(management_url: str, model: str, info: dict, key: str | None = None) -> list[str]:
    """How the running server's loaded model differs from the inspected archive; [] = the same."""
    return loaded_differences(running_description(management_url, model, key), info, model)


def environment_side_by_side(running: dict) -> list[str]:
    """The export's and the running worker's libraries and environment, one line per entry
    (`*` where they differ): what answers depend on beyond the files (the golden answers,
    handler/golden.py, prove they still agree)."""
    rows = []
    for block in ("versions", "environment"):
        pair = running.get(block, {})
        exported, now = _flat(pair.get("exported", {})), _flat(pair.get("running", {}))
        for key in sorted(set(exported) | set(now)):
            mark = " " if exported.get(key) == now.get(key) else "*"
            built, found = exported.get(key, "-"), now.get(key, "-")
            rows.append(f"{mark} {block}.{key:<28} export {built!s:<24} running {found}")
    return rows


def _flat(value: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        out.update(_flat(item, f"{name}.") if isinstance(item, dict) else {name: item})
    return out


def loaded_differences(running: dict, info: dict, model: str) -> list[str]:
    """How a worker's description of what it loaded differs from the inspected archive."""
    if "manifest_sha256" not in running:
        return [f"the server's description of {model} carries no hashes (not this project's handler?)"]
    problems = []
    if running["manifest_sha256"] != info["manifest_sha256"]:
        problems.append(f"{layout.MANIFEST}: server {str(running['manifest_sha256'])[:16]}..., "
                        f"archive {info['manifest_sha256'][:16]}...")
    archive_files = {f["name"]: f["sha256"] for f in info["files"]}
    loaded = running.get("files", {})
    for name in sorted(set(archive_files) | set(loaded)):
        if name not in loaded:
            problems.append(f"{name}: in the archive, not loaded by the server")
        elif name not in archive_files:
            problems.append(f"{name}: loaded by the server, not in the archive")
        elif loaded[name] != archive_files[name]:
            problems.append(f"{name}: server {loaded[name][:16]}..., archive {archive_files[name][:16]}...")
    return problems


def _server_key(args: argparse.Namespace) -> str | None:
    if args.key:
        return args.key
    if args.key_file:
        return json.loads(args.key_file.read_text())["management"]["key"]
    return None


def _archiver_manifest(archive: Archive) -> dict:
    try:
        return json.loads(archive.read(layout.ARCHIVER_MANIFEST))
    except (KeyError, FileNotFoundError):
        return {}


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB" if n >= 1e3 else f"{n} B"


def render(info: dict) -> str:
    """The human-readable report."""
    m, b, v, p = info["model"], info["build"], info["versions"], info["preprocessing"]
    val, ckpt, nan = info["validation"], info["checkpoint"], float("nan")
    commit = b.get("git_commit", "unknown")
    lines = [
        f"archive        {info['archive']}  ({_size(info['archive_bytes'])}"
        + (f", sha256 {info['archive_sha256'][:16]}...)" if info["archive_sha256"] else ")"),
        f"model          {m.get('name')} v{m.get('version')}  arch {m.get('arch')}, format {m.get('format')}"
        f", serialized {info['archiver'].get('serializedFile')}, handler {info['archiver'].get('handler')}",
        f"built          {b.get('built_at')} from commit {commit[:12]}"
        + (" (uncommitted changes)" if commit.endswith("-dirty") else ""),
        f"checkpoint     {ckpt.get('name')}  sha256 {(ckpt.get('sha256') or '-')[:16]}...",
        "versions       " + ", ".join(f"{k} {val_}" for k, val_ in v.items()),
        f"preprocessing  resize shortest side {p.get('resize_size')} ({p.get('interpolation')}), centre crop "
        f"{p.get('input_size')}, {p.get('channel_order')}, mean {[round(x, 4) for x in p.get('mean', [])]}, "
        f"std {[round(x, 4) for x in p.get('std', [])]}",
        f"labels         {info['labels']['count']} ({info['labels']['file']})",
        f"validation     {'PASSED' if val.get('passed') else 'FAILED'}: top-1 agreement "
        f"{val.get('top1_agreement', nan):.3f} on {len(val.get('images', []))} photos "
        f"({', '.join(val.get('images', []))}), max |logit diff| {val.get('max_abs_logit_diff', nan):.2e}"
        f" (tolerance {val.get('tolerance', nan):.0e}, {val.get('format')} vs eager)",
        f"pin            {PIN_ENV}={Path(info['archive']).name}={info['archive_sha256']}"
        if info["archive_sha256"] else "pin            (a directory: pins apply to .mar files)",
        f"files          {len(info['files'])}:",
    ]
    width = max((len(f["name"]) for f in info["files"]), default=0)
    for f in info["files"]:
        lines.append(f"  {f['status']:<8} {f['name']:<{width}}  {_size(f['bytes']):>10}  {f['sha256']}")
    integ = info["integrity"]
    lines.append(f"integrity      {'OK' if integ['ok'] else 'FAILED'}: "
                 + (f"all {integ['checked']} files match the manifest, none unlisted" if integ["ok"]
                    else "; ".join(integ["problems"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help=".mar file or unpacked model directory")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument("--server", metavar="URL",
                        help="management API of a running server to compare with the archive")
    parser.add_argument("--model", default=repo.DEFAULT_MODEL, help="model name on that server")
    parser.add_argument("--key", help="the management key (token authorization on)")
    parser.add_argument("--key-file", type=Path, help="the server's key_file.json (instead of --key)")
    args = parser.parse_args(argv)
    try:
        info = inspect(args.archive)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        print(f"error: cannot inspect {args.archive}: {exc}", file=sys.stderr)
        return 2
    if args.server:
        return _compare_main(args, info)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0 if info["integrity"]["ok"] else 1


def _compare_main(args: argparse.Namespace, info: dict) -> int:
    try:
        running = running_description(args.server, args.model, _server_key(args))
        problems = loaded_differences(running, info, args.model)
    except (OSError, ValueError, KeyError, IndexError, requests.RequestException) as exc:
        print(f"error: cannot ask {args.server} about {args.model}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"same": not problems, "differences": problems,
                          "environment": {k: running.get(k, {}) for k in ("versions", "environment")}},
                         indent=2))
    elif problems:
        print(f"DIFFERENT: {args.server} {args.model} is not {args.archive}:\n  " + "\n  ".join(problems))
    else:
        print(f"SAME: {args.server} {args.model} loaded {args.archive} "
              f"({len(info['files'])} files and {layout.MANIFEST} match)")
    if not args.json:
        print("export vs running (* differs):\n  " + "\n  ".join(environment_side_by_side(running)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
