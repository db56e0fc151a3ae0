"""Response catalog: every text the bot sends, in Korean and English (``shared/responses.json``).

Keys are ``<route>.<situation>`` (e.g. ``order_status.ask_number``) plus
``intent.<CLU intent>`` display names used in fallback suggestions. Texts use
``str.format`` placeholders (``{order_number}``); a key must have the same
placeholders in both languages (checked by the tests).
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.errors import PermanentError

DEFAULT_PATH = Path(__file__).with_name("responses.json")
LANGUAGES = ("ko", "en")


class CatalogError(PermanentError):
    """A key or language missing from the catalog, or a placeholder without a value: a permanent condition (the
    same message fails the same way), so the message is poisoned at once with the reason, never retried."""


class ResponseCatalog:
    """Looks up and fills reply texts."""

    def __init__(self, texts: dict[str, dict[str, str]]):
        self._texts = texts

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> "ResponseCatalog":
        """The catalog in ``path`` (default: ``shared/responses.json``)."""
        return cls(json.loads(cls.load_text(path)))

    @staticmethod
    def load_text(path: Path = DEFAULT_PATH) -> str:
        """The catalog file's JSON text."""
        return path.read_text(encoding="utf-8")

    def keys(self) -> list[str]:
        return list(self._texts)

    def has(self, key: str) -> bool:
        return key in self._texts

    def render(self, key: str, language: str, **params: str) -> str:
        """The text of ``key`` in ``language`` with ``params`` filled in. Raises :class:`CatalogError`."""
        try:
            template = self._texts[key][language]
        except KeyError as exc:
            raise CatalogError(f"no {language!r} text for {key!r}") from exc
        try:
            return template.format(**params)
        except (KeyError, IndexError) as exc:
            raise CatalogError(f"text {key!r} needs parameter {exc}") from exc
