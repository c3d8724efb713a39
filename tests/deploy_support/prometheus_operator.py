"""The PrometheusRule fields the Prometheus Operator documents (monitoring.coreos.com/v1, its CRD's schema:
spec.groups[].rules[]), as a JSON schema: kubernetes-validate knows no CRDs.

Strict like `kubernetes-validate --strict`: an unknown field is an error (the operator would drop it, and a
misspelt `for` or `annotations` would silently change an alert).
"""

from __future__ import annotations

from typing import Any

import jsonschema

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "properties": {
        "record": {"type": "string", "minLength": 1},
        "alert": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRINGS,
        "annotations": _STRINGS,
    },
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}

GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "interval": _DURATION,
        "query_offset": _DURATION,
        "limit": {"type": "integer"},
        "partial_response_strategy": {"type": "string", "pattern": "^([Aa][Bb][Oo][Rr][Tt]|[Ww][Aa][Rr][Nn])?$"},
        "labels": _STRINGS,
        "rules": {"type": "array", "items": RULE},
    },
}

PROMETHEUS_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"groups": {"type": "array", "items": GROUP}},
        },
    },
}


def prometheus_rule_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(PROMETHEUS_RULE)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
