"""The bearer key a client sends: from TorchServe's key_file.json, re-read whenever the file
changes and when the server refuses the key, or from an environment variable. Never from a
command line: a key in a process's arguments is readable by every local user."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Union

KEY_ENV = "IMAGE_CLASSIFIER_KEY"  # the inference key itself
KEY_FILE_ENV = "IMAGE_CLASSIFIER_KEY_FILE"  # a key_file.json to read it from
API = "inference"  # the key of key_file.json predictions need

PathLike = Union[str, "os.PathLike[str]"]


class KeySource:
    """The current inference key: a fixed one, or key_file.json's, read again when the file's
    identity, size or mtime changes (one stat per request) or when `refresh` is called."""

    def __init__(self, key_file: PathLike | None = None, key: str | None = None) -> None:
        if key_file is not None and key is not None:
            raise ValueError("give a key file or a key, not both")
        self.path = Path(key_file) if key_file is not None else None
        self._key = key
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

    def key(self) -> str | None:
        if self.path is None:
            return self._key
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._key  # being replaced: the last key read, if any
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._key = read_key(self.path)
                    self._stamp = stamp
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # half-written: keep the previous key, read again on the next call
        return self._key

    def refresh(self) -> None:
        """Forget the file's stamp, so the next request reads the file again."""
        self._stamp = None

    def headers(self) -> dict:
        key = self.key()
        return {"Authorization": f"Bearer {key}"} if key else {}


def read_key(path: PathLike, api: str = API) -> str:
    """The `api` key of a TorchServe key_file.json ({"inference": {"key": ...}, ...})."""
    return json.loads(Path(path).read_text())[api]["key"]
