"""Response catalog: every text the bot sends, in Korean and English (``shared/responses.json``).

Keys are ``<route>.<situation>`` (e.g. ``order_status.ask_number``) plus
``intent.<CLU intent>`` display names used in fallback suggestions. Texts use
``str.format`` placeholders (``{order_number}``); a key must have the same
placeholders in both languages (checked by the tests).

The texts can be edited without a redeploy (the console): each edit is published as a new
:class:`CatalogVersion` in a :class:`shared.ports.CatalogStore` (Cosmos DB), after :func:`validate_texts`;
every worker answers with a :class:`LiveCatalog`, which picks up a new version within ``CATALOG_REFRESH_SECONDS``
and never uses an invalid one. The shipped file is version 0 and the fallback when nothing was published.
"""

from __future__ import annotations

import json
import logging
import re
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import PermanentError

if TYPE_CHECKING:  # pragma: no cover - types only
    from shared.ports import CatalogStore

log = logging.getLogger(__name__)

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

    def texts(self) -> dict[str, dict[str, str]]:
        """A copy of every text: key -> language -> template."""
        return {k: dict(v) for k, v in self._texts.items()}

    def knows(self, key: str, language: str, text: str) -> bool:
        """True when ``text`` is the (parameterless) text of ``key`` in ``language`` (the reply sender's check that
        an apology is the gateway's own); a :class:`LiveCatalog` also accepts the texts of its recent versions."""
        try:
            return self.render(key, language) == text
        except CatalogError:
            return False


# --------------------------------------------------------------------------- editable catalog (the console)
#: Keys that may be added beyond the route registry's: display names of intents in fallback suggestions.
INTENT_KEY = re.compile(r"^intent\.[A-Za-z][A-Za-z0-9_.-]{0,63}$")
#: Longest text of one key in one language (SendBird messages take far more; a reply should not).
MAX_TEXT_CHARS = 2_000


class CatalogVersion(BaseModel):
    """One published version of the response catalog (a Cosmos DB document ``v<version>``, and the current one
    also as ``current``). Version 0 is the file shipped with the code (``shared/responses.json``)."""

    model_config = ConfigDict(extra="ignore")
    version: int = Field(ge=0)
    texts: dict[str, dict[str, str]]
    author: str = ""
    note: str = Field(default="", max_length=500)
    created_at_ms: int = 0
    based_on: int | None = Field(default=None, description="the version it was edited from")
    reverted_from: int | None = Field(default=None, description="the version it restores, for a revert")

    def changed_keys(self, other: "CatalogVersion | None") -> list[str]:
        """Keys whose texts differ from ``other``'s (all when None)."""
        before = other.texts if other else {}
        return sorted(k for k in set(self.texts) | set(before) if self.texts.get(k) != before.get(k))


class CatalogConflict(RuntimeError):
    """Another version was published since the one an edit started from."""


def placeholders(template: str) -> set[str]:
    """The ``str.format`` field names of ``template``. Raises ``ValueError`` when it is not a valid template."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template)
            if name is not None}


def required_keys() -> list[str]:
    """Every key the gateway answers with: each route's response keys (the route registry) and the apology."""
    from shared.routes import routes
    from shared.state import APOLOGY_KEY

    keys = [k for r in routes() for k in r.response_keys]
    return list(dict.fromkeys([*keys, APOLOGY_KEY]))


def validate_texts(texts: object, baseline: ResponseCatalog | None = None) -> list[str]:
    """Problems of an edited catalog (empty: it can be published): every key of :func:`required_keys` present;
    no key the gateway does not use (other than ``intent.<Intent>`` display names); both languages, not blank, at
    most ``MAX_TEXT_CHARS``; valid templates with the same placeholders in Korean and English, and the same as the
    shipped file's (``baseline``, default ``shared/responses.json``): a handler fills exactly those."""
    if not isinstance(texts, dict):
        return ["the catalog must be an object: key -> {ko, en}"]
    base = (baseline or ResponseCatalog.load()).texts()
    problems = [f"{key}: missing (the gateway answers with it)" for key in required_keys() if key not in texts]
    allowed = set(required_keys())
    for key, langs in texts.items():
        if key not in allowed and not INTENT_KEY.fullmatch(str(key)):
            problems.append(f"{key}: not a response key of the route registry (nor intent.<Intent>)")
        elif not isinstance(langs, dict):
            problems.append(f"{key}: must be an object with 'ko' and 'en'")
        else:
            expected = placeholders(next(iter(base[key].values()))) if key in base else set()
            problems += _entry_problems(key, langs, expected)
    return problems


def _entry_problems(key: str, langs: dict[str, object], expected: set[str]) -> list[str]:
    """Problems of one key's texts: languages, blank or long texts, templates, placeholders (``expected``)."""
    problems: list[str] = []
    extra = sorted(set(langs) - set(LANGUAGES))
    if extra:
        problems.append(f"{key}: unknown language(s) {extra}; only {list(LANGUAGES)}")
    found: dict[str, set[str]] = {}
    for lang in LANGUAGES:
        text = langs.get(lang)
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{key}: the {lang} text is missing or blank")
            continue
        if len(text) > MAX_TEXT_CHARS:
            problems.append(f"{key}: the {lang} text is longer than {MAX_TEXT_CHARS} characters")
        try:
            found[lang] = placeholders(text)
        except ValueError as exc:
            problems.append(f"{key}: the {lang} text is not a valid template ({exc}); write {{{{ and }}}} "
                            "for literal braces")
    for lang, names in found.items():
        if names != expected:
            missing, unknown = sorted(expected - names), sorted(names - expected)
            what = "; ".join(filter(None, [f"missing {{{', '.join(missing)}}}" if missing else "",
                                           f"unknown {{{', '.join(unknown)}}}" if unknown else ""]))
            problems.append(f"{key}: the {lang} text must use the placeholders "
                            f"{sorted(expected) or 'none'} ({what})")
    return problems


class LiveCatalog(ResponseCatalog):
    """The catalog a worker answers with: the latest *valid* published version, looked up at most every
    ``refresh_seconds`` (one point read of the ``current`` document), else the shipped file.

    A published version that fails :func:`validate_texts` (written around the console, or by a newer build) is
    never used: the worker keeps the last good one and logs why. When the store cannot be read, the same
    (retried after ``refresh_seconds``). So a bad catalog or a store outage never breaks a reply. The texts of
    the last few versions stay known to :meth:`knows`, so an apology sent just before an edit is still accepted.
    """

    RECENT_VERSIONS = 5

    def __init__(self, baseline: ResponseCatalog, store: "CatalogStore", refresh_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(baseline.texts())
        self._baseline = baseline
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self.version = 0
        self.last_error: str | None = None
        self._recent: list[dict[str, dict[str, str]]] = [baseline.texts()]

    def refresh(self, force: bool = False) -> None:
        """Look for a newer version now if the last look is older than ``refresh_seconds`` (or ``force``)."""
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self._refresh_seconds:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking; answer with the current texts meanwhile
        try:
            self._checked_at = now
            try:
                current = self._store.current()
            except Exception as exc:  # noqa: BLE001 - a store outage must not break a reply
                self.last_error = f"response catalog store unavailable ({type(exc).__name__}: {exc}); " \
                                  f"keeping version {self.version}"
                log.warning(self.last_error)
                return
            if current is None or current.version == self.version:
                return
            problems = validate_texts(current.texts, self._baseline)
            if problems:
                self.last_error = (f"response catalog version {current.version} refused, keeping version "
                                   f"{self.version}: {'; '.join(problems[:5])}")
                log.error(self.last_error)
                return
            self._texts = {k: dict(v) for k, v in current.texts.items()}
            self._recent = [*self._recent, self._texts][-self.RECENT_VERSIONS:]
            log.info("response catalog: now version %d (was %d)", current.version, self.version)
            self.version, self.last_error = current.version, None
        finally:
            self._lock.release()

    def keys(self) -> list[str]:
        self.refresh()
        return super().keys()

    def has(self, key: str) -> bool:
        self.refresh()
        return super().has(key)

    def render(self, key: str, language: str, **params: str) -> str:
        self.refresh()
        return super().render(key, language, **params)

    def knows(self, key: str, language: str, text: str) -> bool:
        self.refresh()
        return any(t.get(key, {}).get(language) == text for t in self._recent)
