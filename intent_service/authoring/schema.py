"""Request bodies of the authoring API, validated with pydantic.

The project file (what ``:import`` takes and ``:export`` gives) follows CLU's exported-project format,
``projectFileVersion`` 2023-04-01, ``projectKind: Conversation``. A bad file is answered 400
``InvalidArgument`` whose ``target`` is the JSON path of the (first) bad field, e.g.
``assets.utterances[12].dataset``, and whose ``details`` list every bad field (up to 20).

Unknown fields are kept (``extra="allow"``), so an export returns what was imported.
"""
from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, TypeVar

import regex as _regex  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApiError, bad_request

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
RESERVED_PROJECT_NAMES = {"global"}
LANGUAGE_RE = re.compile(r"^(\*|[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
PROJECT_FILE_VERSIONS = ("2023-04-01", "2022-10-01-preview", "2022-05-01")


@dataclass(frozen=True)
class Limits:
    """Project size limits (defaults: Azure CLU's documented limits where it has one)."""

    max_request_bytes: int = 32 * 1024 * 1024
    max_utterances: int = 25_000
    max_utterance_chars: int = 500
    max_intents: int = 500
    max_entities: int = 350
    max_list_values: int = 20_000
    max_regex_chars: int = 500
    max_projects: int = 500
    max_training_jobs: int = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


_M = TypeVar("_M", bound=BaseModel)


class ProjectSettings(_Model):
    confidenceThreshold: float = Field(default=0.0, ge=0.0, le=1.0)


class ProjectMetadata(_Model):
    projectKind: Literal["Conversation"]
    projectName: str = Field(min_length=1, max_length=100)
    language: str = Field(min_length=2, max_length=20)
    multilingual: bool = False
    description: Optional[str] = Field(None, max_length=500)
    settings: ProjectSettings = Field(default_factory=ProjectSettings)


class ProjectPatch(_Model):
    """``PATCH /projects/{p}`` (create or update; merge-patch)."""

    projectKind: Optional[Literal["Conversation"]] = None
    projectName: Optional[str] = Field(None, min_length=1, max_length=100)
    language: Optional[str] = Field(None, min_length=2, max_length=20)
    multilingual: Optional[bool] = None
    description: Optional[str] = Field(None, max_length=500)
    settings: Optional[ProjectSettings] = None


class Intent(_Model):
    category: str = Field(min_length=1, max_length=50)


class Synonym(_Model):
    language: Optional[str] = None
    values: List[str] = Field(default_factory=list)


class Sublist(_Model):
    listKey: str = Field(min_length=1, max_length=100)
    synonyms: List[Synonym] = Field(default_factory=list)


class ListComponent(_Model):
    sublists: List[Sublist] = Field(default_factory=list)


class RegexExpression(_Model):
    regexKey: Optional[str] = Field(None, max_length=100)
    language: Optional[str] = None
    regexPattern: str = Field(min_length=1)


class RegexComponent(_Model):
    expressions: List[RegexExpression] = Field(default_factory=list)


class Prebuilt(_Model):
    category: str


class Entity(_Model):
    category: str = Field(min_length=1, max_length=50)
    compositionSetting: Optional[Literal["returnLongestOverlap", "requireExactOverlap",
                                         "separateComponents", "combineComponents"]] = None
    list: Optional[ListComponent] = None
    regex: Optional[RegexComponent] = None
    # Optional in CLU's project file. (``builtins.list``: in this class body ``list`` is the field above.)
    prebuilts: List[Prebuilt] = Field(default_factory=builtins.list)
    requiredComponents: List[Literal["learned", "list", "prebuilts", "regex"]] = Field(default_factory=builtins.list)


class EntityLabel(_Model):
    category: str = Field(min_length=1)
    offset: int = Field(ge=0)
    length: int = Field(ge=1)


class Utterance(_Model):
    text: str = Field(min_length=1)
    language: Optional[str] = None
    intent: str = Field(min_length=1)
    dataset: Optional[Literal["Train", "Test"]] = None
    entities: List[EntityLabel] = Field(default_factory=list)


class Assets(_Model):
    projectKind: Literal["Conversation"] = "Conversation"
    intents: List[Intent] = Field(default_factory=list)
    entities: List[Entity] = Field(default_factory=list)
    utterances: List[Utterance] = Field(default_factory=list)


class ExportedProject(_Model):
    projectFileVersion: str
    stringIndexType: Literal["Utf16CodeUnit"]
    metadata: ProjectMetadata
    assets: Assets


class EvaluationOptions(_Model):
    kind: Literal["percentage", "manual"] = "percentage"
    trainingSplitPercentage: Optional[int] = Field(None, ge=1, le=99)
    testingSplitPercentage: Optional[int] = Field(None, ge=1, le=99)


class TrainRequest(_Model):
    modelLabel: str
    trainingMode: Literal["standard", "advanced"]
    trainingConfigVersion: Optional[str] = None
    evaluationOptions: Optional[EvaluationOptions] = None


class DeployRequest(_Model):
    trainedModelLabel: str
    #: extension: deploy to the production deployment even if the promotion gate refuses
    force: bool = False
    #: extension: why (recorded in the audit log)
    reason: Optional[str] = Field(None, max_length=500)


class SwapRequest(_Model):
    firstDeploymentName: str
    secondDeploymentName: str
    force: bool = False
    reason: Optional[str] = Field(None, max_length=500)


# --------------------------------------------------------------------------- validation


def json_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "$"


def _invalid(message: str, problems: List[Tuple[str, str]]) -> ApiError:
    details = [{"code": "InvalidArgument", "message": f"{path}: {msg}", "target": path}
               for path, msg in problems[:20]]
    first_path, first_msg = problems[0]
    return bad_request(f"{message}: {first_path}: {first_msg}"
                       + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                       target=first_path, details=details)


def parse(model: Type[_M], body: Any, what: str, prefix: Sequence[Any] = ()) -> _M:
    """Validate ``body`` as ``model``; 400 with the JSON path of the bad field(s)."""
    if not isinstance(body, dict):
        raise bad_request(f"{what}: the body must be a JSON object.", target=json_path(prefix))
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [(json_path(list(prefix) + list(e["loc"])), e["msg"]) for e in exc.errors()]
        raise _invalid(f"Invalid {what}", problems) from None


def check_name(value: str, what: str, target: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise bad_request(f"Invalid {what} {value!r}: 1-100 letters, digits, '-', '_' or '.', "
                          "starting with a letter or digit.", target=target)
    return value


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def validate_project(project: ExportedProject, limits: Limits) -> List[Dict[str, str]]:
    """Cross-field checks and size limits after the schema; raises 400 with paths. Returns warnings."""
    problems: List[Tuple[str, str]] = []
    warnings: List[Dict[str, str]] = []
    a = project.assets
    md = project.metadata
    if project.projectFileVersion not in PROJECT_FILE_VERSIONS:
        problems.append(("projectFileVersion", f"unsupported version {project.projectFileVersion!r}; "
                                               f"supported: {', '.join(PROJECT_FILE_VERSIONS)}"))
    if not LANGUAGE_RE.match(md.language):
        problems.append(("metadata.language", f"not a BCP-47 language code: {md.language!r}"))
    # sizes
    if len(a.utterances) > limits.max_utterances:
        problems.append(("assets.utterances", f"{len(a.utterances)} utterances exceed the limit of "
                                              f"{limits.max_utterances} per project"))
    if len(a.intents) > limits.max_intents:
        problems.append(("assets.intents", f"{len(a.intents)} intents exceed the limit of {limits.max_intents}"))
    if len(a.entities) > limits.max_entities:
        problems.append(("assets.entities", f"{len(a.entities)} entities exceed the limit of {limits.max_entities}"))
    if problems:
        raise _invalid("Project file too large or invalid", problems)
    # intents
    intents = set()
    for i, it in enumerate(a.intents):
        if it.category in intents:
            problems.append((f"assets.intents[{i}].category", f"duplicate intent {it.category!r}"))
        intents.add(it.category)
    # entities
    categories = set()
    list_values = 0
    for i, ent in enumerate(a.entities):
        base = f"assets.entities[{i}]"
        if ent.category in categories:
            problems.append((f"{base}.category", f"duplicate entity {ent.category!r}"))
        categories.add(ent.category)
        if ent.list is not None:
            for j, sub in enumerate(ent.list.sublists):
                for k, syn in enumerate(sub.synonyms):
                    if syn.language is not None and not LANGUAGE_RE.match(syn.language):
                        problems.append((f"{base}.list.sublists[{j}].synonyms[{k}].language",
                                         f"not a BCP-47 language code: {syn.language!r}"))
                    list_values += len(syn.values)
                    for v, value in enumerate(syn.values):
                        if not value.strip() or len(value) > limits.max_utterance_chars:
                            problems.append((f"{base}.list.sublists[{j}].synonyms[{k}].values[{v}]",
                                             "empty or too long"))
        if ent.regex is not None:
            for j, expr in enumerate(ent.regex.expressions):
                path = f"{base}.regex.expressions[{j}].regexPattern"
                if len(expr.regexPattern) > limits.max_regex_chars:
                    problems.append((path, f"longer than {limits.max_regex_chars} characters"))
                    continue
                try:
                    _regex.compile(expr.regexPattern)
                except _regex.error as exc:
                    problems.append((path, f"not a valid regular expression: {exc}"))
        if ent.prebuilts:
            warnings.append({"code": "PrebuiltNotSupported",
                             "message": f"{base}: prebuilt components are not extracted by this service"})
        if ent.list is None and ent.regex is None:
            warnings.append({"code": "LearnedComponentNotSupported",
                             "message": f"{base} ({ent.category}): only list and regex components are "
                                        "extracted by this service; labels of this entity are kept but "
                                        "not learned"})
    if list_values > limits.max_list_values:
        problems.append(("assets.entities", f"{list_values} list values exceed the limit of "
                                            f"{limits.max_list_values}"))
    # utterances
    for i, u in enumerate(a.utterances):
        base = f"assets.utterances[{i}]"
        if len(u.text) > limits.max_utterance_chars:
            problems.append((f"{base}.text", f"{len(u.text)} characters exceed the limit of "
                                             f"{limits.max_utterance_chars}"))
        if not u.text.strip():
            problems.append((f"{base}.text", "must not be blank"))
        if u.intent not in intents:
            problems.append((f"{base}.intent", f"intent {u.intent!r} is not declared in assets.intents"))
        if u.language is not None and not LANGUAGE_RE.match(u.language):
            problems.append((f"{base}.language", f"not a BCP-47 language code: {u.language!r}"))
        n = utf16_len(u.text)
        for j, lab in enumerate(u.entities):
            if lab.category not in categories:
                problems.append((f"{base}.entities[{j}].category",
                                 f"entity {lab.category!r} is not declared in assets.entities"))
            if lab.offset + lab.length > n:
                problems.append((f"{base}.entities[{j}].length",
                                 f"offset {lab.offset} + length {lab.length} is beyond the text "
                                 f"({n} UTF-16 code units)"))
        if len(problems) > 50:
            break
    if problems:
        raise _invalid("Invalid project file", problems)
    return warnings


def parse_project(body: Any, limits: Limits) -> Tuple[ExportedProject, List[Dict[str, str]]]:
    project = parse(ExportedProject, body, "project file")
    warnings = validate_project(project, limits)
    return project, warnings


def dump(model: BaseModel) -> Dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)
