"""The KEDA ScaledObject fields KEDA documents (keda.sh/docs/2.15+/reference/scaledobject-spec,
scalers/nats-jetstream and scalers/external-push), as a JSON schema: kubernetes-validate knows no CRDs.

Strict like `kubernetes-validate --strict`: unknown fields are errors, so a misspelt key (which KEDA
would ignore, falling back to a default) fails the test.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_INT_STRING = {"type": "string", "pattern": r"^[0-9]+$"}  # trigger metadata values are strings
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}

NATS_JETSTREAM_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["natsServerMonitoringEndpoint", "account", "stream", "consumer"],
    "properties": {
        # host:port, no scheme (the scaler adds http:// or https://)
        "natsServerMonitoringEndpoint": {"type": "string", "pattern": r"^[A-Za-z0-9.-]+:[0-9]+$"},
        "account": {"type": "string", "minLength": 1},
        "stream": {"type": "string", "minLength": 1},
        "consumer": {"type": "string", "minLength": 1},
        "lagThreshold": _INT_STRING,
        "activationLagThreshold": _INT_STRING,
        "useHttps": {"type": "string", "enum": ["true", "false"]},
    },
}

# `external` / `external-push` (keda.sh/docs/2.15+/scalers/external-push): KEDA's own keys, plus what it passes
# on to the scaler in ScaledObjectRef.scalerMetadata; `ebbtide scaler` reads `function` alone.
EXTERNAL_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scalerAddress", "function"],
    "properties": {
        "scalerAddress": {"type": "string", "pattern": r"^[A-Za-z0-9.-]+:[0-9]+$"},  # host:port, no scheme
        "enableTLS": {"type": "string", "enum": ["true", "false"]},
        "unsafeSsl": {"type": "string", "enum": ["true", "false"]},
        "function": {"type": "string", "minLength": 1},
    },
}

TRIGGER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "useCachedMetrics": {"type": "boolean"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "authenticationRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
            },
        },
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "nats-jetstream"}}},
            "then": {"properties": {"metadata": NATS_JETSTREAM_METADATA}},
        },
        {
            "if": {"properties": {"type": {"enum": ["external", "external-push"]}}},
            "then": {"properties": {"metadata": EXTERNAL_METADATA}},
        },
    ],
}

_COUNT = {"type": "integer", "minimum": 0}

SCALED_OBJECT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": _NAME, "namespace": _NAME, "labels": {"type": "object"}, "annotations": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": _COUNT,
                "initialCooldownPeriod": _COUNT,
                "idleReplicaCount": {"const": 0},  # KEDA: the only supported value
                "minReplicaCount": _COUNT,
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": _COUNT,
                        "behavior": {"type": "string"},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object", "required": ["target", "formula"]},
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": TRIGGER},
            },
        },
    },
}

_validator = jsonschema.Draft202012Validator(SCALED_OBJECT)


def scaled_object_errors(obj: dict[str, Any]) -> list[str]:
    """Every problem with a ScaledObject: schema errors, then KEDA's cross-field rules."""
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in _validator.iter_errors(obj)]
    if errors:
        return errors
    spec = obj["spec"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if low > high:
        errors.append(f"spec: minReplicaCount {low} > maxReplicaCount {high}")
    if "idleReplicaCount" in spec and spec["idleReplicaCount"] >= low:
        errors.append("spec: idleReplicaCount must be less than minReplicaCount")
    return errors
