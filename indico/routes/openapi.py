"""The OpenAPI 3.1 document, generated from the registered actions and their models.

Nothing here is written by hand per action: each ``ActionHandler`` subclass
lists its actions, and each action names its request and response models, so
the document cannot drift from the code.
"""

from pydantic.json_schema import models_json_schema

COMMON_ERRORS = (400, 404, 405, 413, 415, 431, 503)
ERROR_STATUSES = {
    400: "malformed body or invalid field (the message names the field)",
    401: "missing, malformed, expired or revoked bearer token, or wrong credentials",
    403: "the password given to confirm the action is wrong",
    404: "unknown action, or an object the caller does not own",
    405: "method other than POST",
    409: "conflicts with existing data (an email in use, a job that has ended)",
    413: "body over the configured limit",
    415: "body not sent as application/json",
    431: "request line and headers over the configured limit (INDICO_HEADER_LIMIT)",
    422: "well-formed but cannot be carried out (the message says why)",
    429: "rate limit or quota exceeded (too many wrong passwords, sign-ups or jobs); "
         "see Retry-After",
    503: "the database does not answer; see Retry-After",
}

# Every 401 carries a challenge (RFC 7235 §3.1, RFC 6750 §3).
CHALLENGE_HEADER = {
    "required": True,
    "description": 'Bearer realm="indico", with error="invalid_token" when the token given '
                   "is malformed, unknown, expired or revoked",
    "schema": {"type": "string"},
}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"type": "integer"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        },
    },
}


def _envelope(status, data_schema):
    return {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"const": status}, "data": data_schema},
    }


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi(handlers, version, extra_paths=None):
    """Return the OpenAPI 3.1 document for ``handlers`` (ActionHandler subclasses).

    Args:
        handlers: the ActionHandler subclasses served by the application.
        version: the service version for ``info.version``.
        extra_paths: path items for the plain GET routes.
    """
    specs = [(handler.resource, spec) for handler in handlers for spec in handler.actions.values()]
    models = []
    for _, spec in specs:
        models.append((spec.request, "validation"))
        if spec.response is not None:
            models.append((spec.response, "serialization"))
    keys, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = dict(schema.get("$defs", {}))
    components["Error"] = ERROR_SCHEMA
    error_ref = {"$ref": "#/components/schemas/Error"}

    paths = dict(extra_paths or {})
    for resource, spec in sorted(specs, key=lambda item: (item[0], item[1].name)):
        responses = {
            str(spec.status): _json(
                _envelope(spec.status, keys[(spec.response, "serialization")]
                          if spec.response is not None else {"type": "object"}),
                spec.summary or "success",
            )
        }
        if resource == "portfolio" and spec.name == "optimize":
            responses["202"] = _json(_envelope(202, {"type": "object"}),
                                     "accepted; the job runs in the background")
        statuses = set(COMMON_ERRORS) | set(spec.errors) | ({401} if spec.auth else set())
        for status in sorted(statuses):
            responses[str(status)] = _json(error_ref, ERROR_STATUSES[status])
            if status == 401:
                responses["401"]["headers"] = {"WWW-Authenticate": CHALLENGE_HEADER}
        operation = {
            "operationId": f"{resource}_{spec.name}",
            "tags": [resource],
            "summary": spec.summary,
            "description": spec.description,
            "requestBody": {
                "required": bool(spec.request.model_json_schema().get("required")),
                "content": {"application/json": {
                    "schema": keys[(spec.request, "validation")],
                }},
            },
            "responses": responses,
        }
        operation["security"] = [{"bearer": []}] if spec.auth else []
        paths[f"/{resource}/{spec.name}"] = {"post": operation}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "indico",
            "version": version,
            "description": "Sign up, optimize stock portfolios, keep the results.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the token from auth/signup or auth/login"},
            },
        },
    }

