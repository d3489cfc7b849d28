"""Request bodies: strict JSON parsing, a bounded nesting depth, validation by pydantic.

:func:`parse_body` turns the bytes of a ``POST`` body into a JSON object (an
empty body counts as ``{}``); :func:`validate` checks it with the action's
request model and turns pydantic's errors into one
:class:`~indico.error.ValidationError` that names every bad field without
echoing the input.
"""

import json
from typing import Any, NoReturn, TypeVar

import pydantic

from indico import error

# Only JSON's own white space (RFC 8259 section 2) makes a body empty;
# bytes.strip() would also drop a form feed or a vertical tab.
JSON_WHITESPACE = b" \t\r\n"

Model = TypeVar("Model", bound=pydantic.BaseModel)


def parse_body(raw: bytes, content_type: str, max_depth: int) -> dict[str, Any]:
    """Return the JSON object of a request body.

    Args:
        raw: the body's bytes.
        content_type: the request's ``Content-Type`` header ("" when absent).
        max_depth: the deepest nesting of arrays and objects accepted.

    Returns:
        the parsed object; ``{}`` for a body of JSON white space only.

    Raises:
        UnsupportedMediaType: a body that is not sent as application/json.
        BadRequest: invalid UTF-8 or JSON, too deep, or not an object.
    """
    if raw.strip(JSON_WHITESPACE):
        media_type = content_type.split(";")[0].strip().lower()
        if media_type != "application/json":
            raise error.UnsupportedMediaType(
                f"send the body as Content-Type: application/json, not {media_type or 'nothing'!r}"
            )
        document = parse_json(raw, max_depth)
    else:
        document = {}
    if not isinstance(document, dict):
        raise error.BadRequest(
            f"the body must be a JSON object, not {type(document).__name__}"
        )
    return document


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Parse JSON bytes strictly: UTF-8 only, no NaN/Infinity, bounded nesting.

    Args:
        raw: the bytes.
        max_depth: the deepest nesting of arrays and objects accepted.

    Returns:
        the parsed value.

    Raises:
        BadRequest: with a message that says what is wrong and where.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error.BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    depth = deepest = 0
    in_string = escaped = False
    # A linear scan before parsing: json.loads would recurse on deep input.
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise error.BadRequest(f"JSON nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        message = getattr(exc, "msg", None) or str(exc)
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise error.BadRequest(f"the body is not valid JSON: {message}{where}") from None


def _field_name(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "body"


def validate(model: type[Model], document: Any, context: Any = None) -> Model:
    """Validate ``document`` with ``model``; on failure name every bad field.

    Args:
        model: the pydantic model.
        document: the parsed body.
        context: pydantic's validation context, handed to the model's
            validators (``ValidationInfo.context``); None for none.

    Returns:
        the model instance.

    Raises:
        ValidationError: message of the first problem, ``field`` and ``errors``.
    """
    try:
        return model.model_validate(document, context=context)
    except pydantic.ValidationError as exc:
        problems = [
            {"field": _field_name(item["loc"]), "message": _problem(item)}
            for item in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise error.ValidationError(
            f"{first['field']}: {first['message']}", field=first["field"], errors=problems
        ) from None


def _problem(item: Any) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown field; it is not accepted here"
    if item["type"] == "missing":
        return "required field is missing"
    return item["msg"]
