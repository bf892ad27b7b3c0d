"""The operator's pins: the SHA-256 of each archive allowed to run, checked before TorchServe starts.

An archive's own provenance.json proves nothing against whoever rewrote the archive: they
recompute it. So what may run is pinned from outside, in the server's environment:

    ARCHIVE_SHA256=efficientnet_lite0.mar=5d71ef6f...        one NAME.mar=HEX per archive, comma-separated
    ARCHIVE_SHA256=5d71ef6f...                               a bare HEX when one archive is served
    ARCHIVE_PINS_REQUIRED=1                                  refuse to start with an archive unpinned
    ARCHIVE_VERIFY_KEY=archive.pub                           every archive signed with its private key

ARCHIVE_VERIFY_KEY (scripts/ops/signature.py) makes a signature, NAME.mar.sig beside NAME.mar,
required of every archive served: an unsigned archive, one whose bytes are not the ones signed
and one signed with another key are refused; an archive whose signature verifies counts as
pinned (a pin, if given too, must hold as well).

`check_pins` hashes every archive the server is about to load (streamed) and raises PinError,
naming the archive, the pinned and the actual digest, on any difference; a pin for an archive
that is not served is refused too (a typo would otherwise leave the archive unpinned). With no
pin and no ARCHIVE_PINS_REQUIRED (`make serve` on a development machine) it logs one line,
"archive not pinned", and goes on.

It returns the environment TorchServe must pass its workers (TorchServe hands its own
environment to every worker): ARCHIVE_MANIFESTS, the SHA-256 of each checked archive's
provenance.json and MAR-INF/MANIFEST.json, which handler/integrity.py holds the extracted model
directory to before any archive code runs (so the files a worker sees are the ones checked here,
even if the store or the extracted copy changed since); PYTHONDONTWRITEBYTECODE=1, without which
a worker refuses to load (it cannot tell bytecode it wrote from bytecode planted); and
ARCHIVE_PINS_REQUIRED as given.

Standard library only (with handler/integrity.py, which is too; signature.py imports its
packages only when a key is given): it runs before anything is served, in the runtime image as on
a development machine.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from handler import integrity
from scripts.ops import signature, verified_copy

PIN_ENV = "ARCHIVE_SHA256"
REQUIRED_ENV = integrity.REQUIRED_ENV
MANIFESTS_ENV = integrity.MANIFESTS_ENV

logger = logging.getLogger(__name__)


class PinError(RuntimeError):
    """An archive is not the one pinned, is unpinned where pins are required, or a pin is malformed."""


def served_archives(model_store: Path, models: str) -> list[str]:
    """The archive file names of TorchServe's `load_models` ("NAME=FILE.mar,..."; "FILE.mar";
    "all": every .mar of the store)."""
    if models.strip() == "all":
        return sorted(p.name for p in Path(model_store).glob("*.mar"))
    names = [item.split("=", 1)[-1].strip() for item in models.split(",") if item.strip()]
    return list(dict.fromkeys(names))


def parse_pins(text: str, archives: list[str]) -> dict[str, str]:
    """{archive file name: pinned hex} of ARCHIVE_SHA256's value, checked: 64 hex digits each,
    a bare digest only with one archive served, no pin for an archive not served."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        if len(archives) != 1:
            raise PinError(f"{PIN_ENV} holds one bare digest, but {len(archives)} archives are served "
                           f"({', '.join(archives)}): give NAME.mar=HEX for each")
        return {archives[0]: _digest(text, archives[0])}
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, digest = item.partition("=")
        if not sep:
            raise PinError(f"{PIN_ENV}: {item!r} is not NAME.mar=HEX")
        pins[name.strip()] = _digest(digest, name.strip())
    if unknown := sorted(set(pins) - set(archives)):
        raise PinError(f"{PIN_ENV} pins {', '.join(unknown)}, which is not served "
                       f"(served: {', '.join(archives) or 'none'})")
    return pins


def _digest(text: str, archive: str) -> str:
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise PinError(f"{PIN_ENV}: the pin for {archive} is not a SHA-256 (64 hex digits): {text!r}")
    return digest


def archive_digests(path: Path) -> tuple[str, str | None]:
    """(the archive's SHA-256, "PROVENANCE_SHA256:MAR_INF_SHA256" of its two manifests, as
    ARCHIVE_MANIFESTS holds them), both read through one open file: the manifests are those of
    the bytes hashed, even if the path is replaced meanwhile."""
    with open(path, "rb") as fh:
        digest, _ = integrity.sha256_stream(fh)
        fh.seek(0)
        return digest, _manifest_pair(fh, path.name)


def _manifest_pair(fh: BinaryIO, name: str) -> str | None:
    try:
        with zipfile.ZipFile(fh) as zf:
            if integrity.MANIFEST not in zf.namelist():
                return None  # not one of ours: no manifests to hand on
            return ":".join(integrity.sha256_stream(zf.open(member))[0]
                            for member in (integrity.MANIFEST, integrity.ARCHIVER_MANIFEST))
    except (KeyError, zipfile.BadZipFile) as exc:
        raise PinError(f"{name}: cannot read {integrity.MANIFEST} and "
                       f"{integrity.ARCHIVER_MANIFEST} from it ({exc})") from exc


@dataclass(frozen=True)
class Checked:
    """What TorchServe is started with once every archive passed: its workers' environment, and
    the store and load_models of the verified copies (verified_copy.py)."""

    env: dict[str, str]
    model_store: Path
    models: str


def check_pins(model_store: Path, models: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Check every archive `models` loads from `model_store` against ARCHIVE_SHA256 in `environ`;
    raise PinError on the first difference. Returns the environment TorchServe's workers need."""
    return _check(Path(model_store), models, environ, None).env


def verified_copies(model_store: Path, models: str, environ: Mapping[str, str], store: Path) -> Checked:
    """check_pins, each archive checked through a private copy in `store` (emptied first), which
    is then unpacked there (verified_copy.unpack): TorchServe is to load those folders, never
    the store's .mar files."""
    return _check(Path(model_store), models, environ, verified_copy.fresh_store(store))


def _check(model_store: Path, models: str, environ: Mapping[str, str], store: Path | None) -> Checked:
    archives = served_archives(model_store, models)
    pins = parse_pins(environ.get(PIN_ENV, ""), archives)
    required = integrity.required(environ)
    verifying = _verifier(environ)
    manifests = []
    for name in archives:
        path = model_store / name
        if not path.is_file():
            raise PinError(f"{name}: no such archive in {model_store}")
        signed = _signed_digest(path, verifying)
        if store is None:
            actual, manifest_pair = archive_digests(path)
        else:
            actual = verified_copy.copy_and_hash(path, store / name)
            with open(store / name, "rb") as fh:
                manifest_pair = _manifest_pair(fh, name)
        if signed is not None:
            _check_signed(name, actual, signed)
            pins.setdefault(name, signed)  # verified: as good as the operator's own pin
        if manifest_pair is None and name not in pins:
            # No provenance.json: no worker-side check can hold it to anything, so its pin is
            # the whole check (the benchmark's stock TorchServe archive is such a one).
            raise PinError(f"{name}: not an archive of this project (no {integrity.MANIFEST}); it runs "
                           f"only pinned: set {PIN_ENV}={name}={actual} if this is the archive to run")
        if name in pins and actual != pins[name]:
            raise PinError(f"{name}: sha256 {actual} is not the pinned {pins[name]} ({PIN_ENV}): "
                           "not starting")
        if name not in pins:
            if required:
                raise PinError(f"{name}: archive not pinned and {REQUIRED_ENV}=1: set "
                               f"{PIN_ENV}={name}={actual} if this is the archive to run")
            logger.warning("archive not pinned: %s (sha256 %s; set %s to pin it)", name, actual, PIN_ENV)
        if manifest_pair is not None:
            manifests.append(manifest_pair)
        if store is not None:
            _unpack(store / name, manifest_pair is not None)
    env = {MANIFESTS_ENV: ",".join(manifests), "PYTHONDONTWRITEBYTECODE": "1"}
    if required:
        env[REQUIRED_ENV] = "1"
    return Checked(env, store or model_store, models if store is None else _folders(models))


def _unpack(copy: Path, ours: bool) -> None:
    """The checked copy unpacked beside it into a folder named after it, then removed."""
    folder = copy.with_suffix("")
    try:
        verified_copy.unpack(copy, folder, manifest=ours)
    except (verified_copy.UnsafeArchive, integrity.IntegrityError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise PinError(str(exc)) from exc
    finally:
        copy.unlink()


def _folders(models: str) -> str:
    """load_models naming the verified folders instead of the archives ("NAME=FILE.mar" ->
    "NAME=FILE"; "all" stays all: the verified store holds only those folders)."""
    if models.strip() == "all":
        return "all"
    items = [item.strip() for item in models.split(",") if item.strip()]
    return ",".join(item.removesuffix(".mar") for item in items)


def _verifier(environ: Mapping[str, str]) -> object | None:
    """The signature verifier for ARCHIVE_VERIFY_KEY, or None where it is not set."""
    key = environ.get(signature.VERIFY_KEY_ENV, "").strip()
    if not key:
        return None
    try:
        return signature.verifier(Path(key))
    except signature.SignatureError as exc:
        raise PinError(str(exc)) from exc


def _signed_digest(path: Path, verifying: object | None) -> str | None:
    """The SHA-256 `path`'s signature vouches for (verified), or None where none is required."""
    if verifying is None:
        return None
    try:
        return signature.signed_digest(path, verifying)
    except signature.SignatureError as exc:
        raise PinError(str(exc)) from exc


def _check_signed(name: str, actual: str, signed: str) -> None:
    # The signature was verified against the path, the digest taken through another open: an
    # archive replaced in between is caught here, so the manifests handed on are the signed ones.
    if actual != signed:
        raise PinError(f"{name}: sha256 {actual} is not the one its signature vouches for ({signed}): "
                       "the archive changed while it was checked; not starting")
