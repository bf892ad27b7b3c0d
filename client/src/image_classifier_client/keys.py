"""The bearer key a client sends: from TorchServe's key_file.json, re-read whenever the file
changes and when the server refuses the key, or from an environment variable. Never from a
command line: a key in a process's arguments is readable by every local user."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Union

KEY_ENV = "IMAGE_CLASSIFIER_KEY"  # the inference key itself
KEY_FILE_ENV = "IMAGE_CLASSIFIER_KEY_FILE"  # a key_file.json to read it from
API = "inference"  # the key of key_file.json predictions need

PathLike = Union[str, "os.PathLike[str]"]


class KeySource:
    """The current key: a fixed one, or key_file.json's, read again when the file's identity,
    size or mtime changes (one stat per request) or when `refresh` is called. A file that does
    not read whole (`read_key_file`: TorchServe rewrites it in place when a key is renewed) keeps
    the last good keys and is read again on the next call. `required`: the kinds of key a whole
    file has (the inference key by default)."""

    def __init__(self, key_file: PathLike | None = None, key: str | None = None,
                 required: Sequence[str] = (API,)) -> None:
        if key_file is not None and key is not None:
            raise ValueError("give a key file or a key, not both")
        self.path = Path(key_file) if key_file is not None else None
        self.required = tuple(required)
        self._key = key
        self._doc: dict = {}
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    @classmethod
    def resolve(cls, key_file: PathLike | None = None, key: str | None = None) -> KeySource:
        """The caller's choice, else $IMAGE_CLASSIFIER_KEY, else $IMAGE_CLASSIFIER_KEY_FILE,
        else none (a server without token authorization, or a proxy that adds the key)."""
        if key_file is not None or key is not None:
            return cls(key_file, key)
        if os.environ.get(KEY_ENV):
            return cls(key=os.environ[KEY_ENV])
        return cls(os.environ.get(KEY_FILE_ENV) or None)

    @property
    def renewable(self) -> bool:
        """Whether a refused key may be replaced by reading the file again."""
        return self.path is not None

    def document(self) -> dict:
        """The key file as last read whole ({} before that, or without a file)."""
        if self.path is None:
            return {}
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._doc  # being replaced: the last keys read, if any
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._doc = read_key_file(self.path, self.required)
                    self._stamp = stamp
                except (OSError, ValueError):
                    pass  # half-written: keep the previous keys, read again on the next call
        return self._doc

    def key(self, api: str = API) -> str | None:
        """The `api` key (inference, management, API); a fixed key is an inference key."""
        if self.path is None:
            return self._key if api == API else None
        entry = self.document().get(api)
        return entry.get("key") if isinstance(entry, dict) else None

    def refresh(self) -> None:
        """Forget the file's stamp, so the next request reads the file again."""
        self._stamp = None

    def headers(self, api: str = API) -> dict:
        key = self.key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}


def read_key_file(path: PathLike, required: Sequence[str] = (API,)) -> dict:
    """A TorchServe key_file.json ({"inference": {"key": ..., "expiration time": ...},
    "management": {...}, "API": {...}}); ValueError where a kind in `required` has no key: the
    file is partly written (or not TorchServe's)."""
    doc = json.loads(Path(path).read_text())
    missing = [kind for kind in required if not (
        isinstance(doc, dict) and isinstance(doc.get(kind), dict) and isinstance(doc[kind].get("key"), str))]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} key: partly written, or not "
                         "TorchServe's key file")
    return doc

