"""Containers for key bytes that never show them: not in repr, str, logs or exceptions."""
from __future__ import annotations

import hmac
from typing import NoReturn


class SecretBytes:
    """Key bytes (a master key or a data key). Compare with ``equals`` (constant time)."""

    __slots__ = ("_value", "_label")

    def __init__(self, value: bytes, label: str = "secret"):
        self._value = bytes(value)
        self._label = label

    def reveal(self) -> bytes:
        """The raw bytes: pass them to a cipher or to KMS, nowhere else."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def equals(self, other: "SecretBytes") -> bool:
        return hmac.compare_digest(self._value, other._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretBytes) and self.equals(other)

    def __hash__(self) -> int:
        return hash((type(self), len(self._value)))

    def __repr__(self) -> str:
        return f"<{self._label}: {len(self._value)} bytes, redacted>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:  # never pickled into a report or a queue that might be persisted
        raise TypeError("secret bytes cannot be pickled")


class DataKey(SecretBytes):
    __slots__ = ()

    def __init__(self, value: bytes):
        super().__init__(value, "data key")
