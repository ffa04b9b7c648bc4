"""The public keys users registered on the gateway's page, kept in one file of the hub's.

The file (``gpuspawner-ssh-keys.json`` in the hub's folder by default) is the gateway's
own: mode 600, written whole and renamed into place, read once when the gateway starts.
Keys never come from a server's home, so nothing a student's server holds (a link, an odd
file, another user's keys) has any say in who logs in, and keys work with no server running.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import asyncssh

#: At most this many keys per user, and this long a key line.
MAX_KEYS = 20
MAX_LINE = 16384
#: Key types refused: DSA is broken and OpenSSH no longer offers it.
REFUSED_ALGORITHMS = {b"ssh-dss"}
MIN_RSA_BITS = 2048

_COMMENT = re.compile(r"[^\x20-\x7e]")


class KeyRefused(ValueError):
    """A key line that cannot be registered; the message says why."""


@dataclass(frozen=True)
class RegisteredKey:
    line: str  # "ssh-ed25519 AAAA... comment", as normalised here
    fingerprint: str  # "SHA256:..."
    comment: str
    added: str  # ISO time

    @property
    def algorithm(self) -> str:
        return self.line.split(" ", 1)[0]


def parse_key(text: str) -> tuple[asyncssh.SSHKey, str]:
    """One OpenSSH public key line (``ssh-ed25519 AAAA... comment``): the key and its comment."""
    text = text.strip()
    if not text:
        raise KeyRefused("no key given: paste the one line of your public key (~/.ssh/id_ed25519.pub)")
    if "PRIVATE KEY" in text:
        raise KeyRefused("this is a private key: never share it. Paste the public key (the .pub file) instead")
    if len(text) > MAX_LINE or "\n" in text:
        raise KeyRefused("one key at a time: paste the one line of a public key (~/.ssh/id_ed25519.pub)")
    words = text.split()
    if len(words) < 2:
        raise KeyRefused("not an OpenSSH public key line: it looks like `ssh-ed25519 AAAA... you@laptop`")
    if words[0].endswith("-cert-v01@openssh.com"):
        raise KeyRefused("certificates are not taken: paste the plain public key")
    try:
        key = asyncssh.import_public_key(" ".join(words[:2]))
    except (asyncssh.KeyImportError, ValueError) as e:
        raise KeyRefused(
            f"not an OpenSSH public key line ({e}): it looks like `ssh-ed25519 AAAA... you@laptop`"
        ) from None
    if key.algorithm in REFUSED_ALGORITHMS:
        raise KeyRefused("DSA keys are not taken (they are broken): make an ed25519 key with ssh-keygen -t ed25519")
    if key.algorithm == b"ssh-rsa":
        bits = key.pyca_key.key_size if hasattr(key, "pyca_key") else MIN_RSA_BITS
        if bits < MIN_RSA_BITS:
            raise KeyRefused(f"an RSA key of {bits} bits is too weak: make an ed25519 key (ssh-keygen -t ed25519)")
    comment = _COMMENT.sub("", " ".join(words[2:]))[:100]
    return key, comment


class KeyStore:
    """Every user's registered keys, in ``path`` (written at each change, mode 600)."""

    def __init__(self, path: str):
        self.path = path
        self._keys: dict[str, list[RegisteredKey]] = {}
        self._parsed: dict[str, list[asyncssh.SSHKey]] = {}
        self.load()

    def load(self) -> None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise KeyRefused(f"cannot read the keys file {self.path}: {e}") from None
        for user, entries in (data.get("users") or {}).items():
            self._keys[user] = [RegisteredKey(**entry) for entry in entries]

    def _save(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        data = {"version": 1, "users": {u: [asdict(k) for k in keys] for u, keys in sorted(self._keys.items()) if keys}}
        fd, tmp = tempfile.mkstemp(prefix=".ssh-keys-", dir=folder)  # mode 600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def keys_of(self, user: str) -> list[RegisteredKey]:
        return list(self._keys.get(user, ()))

    def public_keys(self, user: str) -> list[asyncssh.SSHKey]:
        """``user``'s keys, parsed (cached), for the login check."""
        if user not in self._parsed:
            self._parsed[user] = [asyncssh.import_public_key(k.line) for k in self._keys.get(user, ())]
        return self._parsed[user]

    def find(self, user: str, key: asyncssh.SSHKey) -> RegisteredKey | None:
        """The registered key of ``user`` that is ``key``; None."""
        for registered, parsed in zip(self._keys.get(user, ()), self.public_keys(user)):
            if parsed.public_data == key.public_data:
                return registered
        return None

    def add(self, user: str, text: str, now: datetime | None = None) -> RegisteredKey:
        key, comment = parse_key(text)
        if self.find(user, key) is not None:
            raise KeyRefused("this key is registered already")
        if len(self._keys.get(user, ())) >= MAX_KEYS:
            raise KeyRefused(f"you have {MAX_KEYS} keys already: remove one first")
        line = key.export_public_key("openssh").decode().strip().split(" ")[:2]
        entry = RegisteredKey(
            line=" ".join([*line, comment]).strip(),
            fingerprint=key.get_fingerprint("sha256"),
            comment=comment,
            added=(now or datetime.now(timezone.utc)).replace(microsecond=0).isoformat(),
        )
        self._keys.setdefault(user, []).append(entry)
        self._parsed.pop(user, None)
        self._save()
        return entry

    def remove(self, user: str, fingerprint: str) -> bool:
        keys = self._keys.get(user, [])
        kept = [k for k in keys if k.fingerprint != fingerprint]
        if len(kept) == len(keys):
            return False
        self._keys[user] = kept
        self._parsed.pop(user, None)
        self._save()
        return True


__all__ = ["KeyRefused", "KeyStore", "MAX_KEYS", "RegisteredKey", "parse_key"]
