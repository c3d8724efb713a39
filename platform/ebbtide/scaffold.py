"""`ebbtide new NAME --lang zig|c|assemblyscript|python`: a new function that builds and passes its test at once.

Writes <dir>/main.{zig,c,ts} from a template (it publishes each JSON object it receives to its `target`
subject and rejects anything else), a test next to it (ebbtide.testing: built, then run on messages as the
host runs it; no server needed: `pytest <dir>`), and appends `[modules.NAME]` + `[functions.NAME]` (and, when no stream
captures the function's subjects, `[streams.NAME]`) to the manifest. The new manifest is validated before
anything is written; nothing is overwritten.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .build import LANGUAGES
from .errors import ManifestError, ScaffoldError, UsageError
from .manifest import LoadedManifest, parse_manifest
from .subjects import subject_matches

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")


@dataclass(frozen=True)
class Scaffolded:
    source: Path
    test: Path
    manifest: Path
    notes: tuple[str, ...] = ()  # what the other commands now need to know about the new function


def new_function(
    manifest: LoadedManifest,
    name: str,
    lang: str,
    *,
    folder: str | None = None,
    trigger: str | None = None,
    output: str | None = None,
) -> Scaffolded:
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(f"{name!r} is not a function name: lowercase letters, digits, _ and -, starting with a letter")
    if lang not in TEMPLATES:
        raise ScaffoldError(f"unknown language {lang!r} (one of: {', '.join(TEMPLATES)})")
    spec = manifest.spec
    for section, names in (("modules", spec.modules), ("functions", spec.functions)):
        if name in names:
            raise ScaffoldError(f"{manifest.path}: [{section}.{name}] already exists")
    folder = folder or f"functions/{name}"
    source_dir = manifest.resolve(folder)
    if source_dir.exists() and any(source_dir.iterdir()):
        raise ScaffoldError(f"{source_dir} already exists and is not empty")
    trigger = trigger or f"{name}.in"
    output = output or f"{name}.out"

    text = manifest.path.read_text()
    addition = _manifest_entry(manifest, name, lang, folder, trigger, output)
    new_text = text + ("" if text.endswith("\n") else "\n") + addition
    try:
        scaffolded = parse_manifest(new_text, manifest.path)  # validated before anything is written
    except ManifestError as exc:
        raise ScaffoldError(f"the new entry would make the manifest invalid:\n{exc}") from None

    main = source_dir / LANGUAGES[lang].main
    test = source_dir / f"test_{name.replace('-', '_')}.py"
    values = {
        "name": name,
        "output": output,
        "trigger": trigger,
        "lang": lang,
        "manifest": os.path.relpath(manifest.path, source_dir),
    }
    source_dir.mkdir(parents=True, exist_ok=True)
    main.write_text(Template(TEMPLATES[lang]).substitute(values))
    test.write_text(Template(TEST_TEMPLATE).substitute(values))
    tmp = manifest.path.with_name(f".{manifest.path.name}.{os.getpid()}.tmp")
    tmp.write_text(new_text)
    tmp.replace(manifest.path)  # all or nothing
    return Scaffolded(main, test, manifest.path, _notes(scaffolded, name, trigger))


def _notes(manifest: LoadedManifest, name: str, trigger: str) -> tuple[str, ...]:
    """What changes for the other commands (README) now that `name` is in the manifest."""
    from .broker.users import ingress_subjects
    from .workload.orders import default_entry_subject

    notes = []
    if trigger in ingress_subjects(manifest):  # nothing publishes to it: clients do (`ingress` may)
        try:
            default = default_entry_subject(manifest)
        except UsageError:
            notes.append(f"`ebbtide publish` now needs --subject: give --subject {trigger} to publish to {name}")
        else:
            if default != trigger:
                notes.append(f"`ebbtide publish` still sends orders to {default}; --subject {trigger} publishes to {name}")
    if (manifest.path.parent / "docker-compose.yml").exists():
        notes.append(
            f"`ebbtide up` runs {name}; docker-compose.yml (and deploy/kubernetes) run one service per function: "
            f"add one for {name} (as distributor's, with --function {name}) to run it there"
        )
    return tuple(notes)


def _manifest_entry(manifest: LoadedManifest, name: str, lang: str, folder: str, trigger: str, output: str) -> str:
    streams = manifest.spec.streams
    captured = [any(subject_matches(p, s) for stream in streams.values() for p in stream.subjects) for s in (trigger, output)]
    lines = ["", f"# added by `ebbtide new {name} --lang {lang}`"]
    if not any(captured) and trigger.startswith(f"{name}.") and output.startswith(f"{name}."):
        if name in streams:
            raise ScaffoldError(f"{manifest.path}: no stream captures {trigger!r}, and [streams.{name}] is taken")
        # As the reference ORDERS stream: acked messages kept a day, so retried publishes stay deduplicated
        # across a server restart (README: Delivery guarantees).
        lines += [f"[streams.{name}]", f'subjects = ["{name}.>"]', 'retention = "limits"', "max_age_s = 86400", ""]
    lines += [
        f"[modules.{name}]",
        f'source = "{folder}"',
        f'lang = "{lang}"',
        "",
        f"[functions.{name}]",
        f'module = "{name}"',
        f'trigger = "{trigger}"',
        f'publish = ["{output}"]',
        f'config = {{ target = "{output}" }}',
    ]
    if lang == "python":  # an interpreter per instance: 12.4 MiB at start, ~250,000 fuel per message
        lines.append("limits = { memory_mib = 32, fuel = 50_000_000 }")
    lines.append("")
    return "\n".join(lines)


# -- templates (string.Template: ${name}, ${output}) -------------------------------------------------------------

ZIG_TEMPLATE = """\
//! ${name}: publishes each JSON object it receives to its target subject, unchanged.
//!
//! OK:     ["publish", <target>, <payload>]
//! REJECT: "malformed-json: ..."  the payload is not JSON, or not an object
//!
//! Config: target (default "${output}"), the subject to publish to (allowed by `publish` in the manifest).
//! SDK reference: functions/README.md and docs/functions.md; the ABI: docs/abi.md.

const ebbtide = @import("ebbtide");
const json = ebbtide.json;

comptime {
    ebbtide.exportFunction(@This());
}

var target_buf: [256]u8 = undefined;
var target: []const u8 = "${output}";

pub fn init(config: ebbtide.Config, out: *ebbtide.Output) ebbtide.Status {
    switch (config.string("target", &target_buf)) {
        .missing => {},
        .ok => |s| target = s,
        .invalid => |why| return out.reject(.{ "config: target ", why }),
    }
    if (target.len == 0) return out.reject("config: target is empty");
    return .ok;
}

pub fn handle(msg: ebbtide.Message, out: *ebbtide.Output) ebbtide.Status {
    const doc = switch (json.parse(msg.payload)) {
        .ok => |v| v,
        .err => |e| return out.reject(.{ "malformed-json: ", e.message, " at offset ", e.offset }),
    };
    if (doc.kind != .object) return out.reject(.{ "malformed-json: expected an object, got ", doc.kind.phrase() });
    out.publish(target, msg.payload);
    return .ok;
}
"""

C_TEMPLATE = """\
/* ${name}: publishes each JSON object it receives to its target subject, unchanged.
 *
 * OK:     ["publish", <target>, <payload>]
 * REJECT: "malformed-json: ..."  the payload is not JSON, or not an object
 *
 * Config: target (default "${output}"), the subject to publish to (allowed by `publish` in the manifest).
 * SDK reference: functions/sdk-c/ebbtide.h and docs/functions.md; the ABI: docs/abi.md.
 */
#include "ebbtide.h"

static uint8_t target_buf[256];
static eb_bytes target = EB_LIT("${output}");

eb_status eb_function_init(eb_config config, eb_output *out) {
    const char *why;
    if (eb_config_string(config, "target", target_buf, sizeof target_buf, &target, &why) == EB_CONFIG_INVALID) {
        eb_reject(out, "config: target ");
        eb_reason(out, why);
        return EB_REJECT;
    }
    if (target.len == 0) return eb_reject(out, "config: target is empty");
    return EB_OK;
}

eb_status eb_function_handle(const eb_message *msg, eb_output *out) {
    eb_json doc;
    eb_json_error error;
    if (!eb_json_parse(msg->payload, &doc, &error)) {
        eb_reject(out, "malformed-json: ");
        eb_reason(out, error.message);
        eb_reason(out, " at offset ");
        eb_reason_int(out, (int64_t)error.offset);
        return EB_REJECT;
    }
    if (doc.kind != EB_JSON_OBJECT) {
        eb_reject(out, "malformed-json: expected an object, got ");
        eb_reason(out, eb_json_kind_phrase(doc.kind));
        return EB_REJECT;
    }
    eb_publish(out, target, msg->payload);
    return EB_OK;
}
"""

AS_TEMPLATE = """\
// ${name}: publishes each JSON object it receives to its target subject, unchanged.
//
// OK:     ["publish", <target>, <payload>]
// REJECT: "malformed-json: ..."  the payload is not JSON, or not an object
//
// Config: target (default "${output}"), the subject to publish to (allowed by `publish` in the manifest).
// SDK reference: functions/sdk-assemblyscript/assembly/index.ts and docs/functions.md; the ABI: docs/abi.md.

import {
  Kind, MISSING, Span, Status, configString, jsonKind, jsonParse, kindPhrase, lastError, lastErrorOffset,
  onInit, onMessage, publish, reason, reject, spanLen,
} from "ebbtide";
export * from "ebbtide/exports";

const TARGET_BUF: usize = memory.data(256);
let target: Span = MISSING;

onInit((config: Span): Status => {
  target = configString(config, "target", TARGET_BUF, 256);
  if (lastError.length != 0) {
    reject("config: target ");
    reason(lastError);
    return Status.REJECT;
  }
  if (target != MISSING && spanLen(target) == 0) return reject("config: target is empty");
  return Status.OK;
});

onMessage((subject: Span, payload: Span): Status => {
  const doc = jsonParse(payload);
  if (doc == MISSING) {
    reject("malformed-json: ");
    reason(lastError);
    reason(" at offset ");
    reason(lastErrorOffset);
    return Status.REJECT;
  }
  if (jsonKind(doc) != Kind.OBJECT) {
    reject("malformed-json: expected an object, got ");
    reason(kindPhrase(jsonKind(doc)));
    return Status.REJECT;
  }
  if (target == MISSING) publish("${output}", payload);
  else publish(target, payload);
  return Status.OK;
});
"""

PY_TEMPLATE = '''\
"""${name}: publishes each JSON object it receives to its target subject, unchanged.

OK:     ["publish", <target>, <payload>]
REJECT: "malformed-json: ..."  the payload is not JSON, or not an object

Config: target (default "${output}"), the subject to publish to (allowed by `publish` in the manifest).
Written against the Python SDK (functions/sdk-python/ebbtide_sdk.py); see docs/functions.md.
"""

from ebbtide_sdk import Message, Reject, kind_of, publish

target = "${output}"


def init(config: dict[str, str]) -> None:
    global target
    value = config.get("target", target)
    if not isinstance(value, str) or not value:
        raise Reject("config: target must be a non-empty string")
    target = value


def handle(message: Message) -> None:
    document = message.json()  # strict JSON, or Reject("malformed-json: ...")
    if not isinstance(document, dict):
        raise Reject(f"malformed-json: expected an object, got {kind_of(document)}")
    publish(target, message.payload)
'''

TEMPLATES = {"zig": ZIG_TEMPLATE, "c": C_TEMPLATE, "assemblyscript": AS_TEMPLATE, "python": PY_TEMPLATE}

TEST_TEMPLATE = '''\
"""${name} (${lang}): built from source and run on messages as the host runs it (ebbtide.testing).

Run with `pytest <this folder>`; no NATS server needed. Written by `ebbtide new`; extend it with your cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ebbtide.testing import FunctionUnderTest, Publish

MANIFEST = (Path(__file__).resolve().parent / "${manifest}").resolve()


@pytest.fixture(scope="module")
def function() -> FunctionUnderTest:
    return FunctionUnderTest.from_manifest(MANIFEST, "${name}")  # built first if its sources changed


def test_publishes_a_json_object_to_its_target(function: FunctionUnderTest) -> None:
    payload = b'{"hello": "world", "n": [1, 2, 3]}'
    result = function.run(payload, "${trigger}")
    assert result.outcome == "ack", result.error
    assert result.effects == [Publish("${output}", payload)]


@pytest.mark.parametrize("payload, reason", [
    (b"", "malformed-json: "),  # then the parser's own words (Python's json module has its own)
    (b"[1, 2]", "malformed-json: expected an object, got an array"),
    (b'{"a": 1,}', "malformed-json: "),
])
def test_rejects_what_is_not_a_json_object(function: FunctionUnderTest, payload: bytes, reason: str) -> None:
    result = function.run(payload, "${trigger}")
    assert (result.outcome, result.reason) == ("dead-letter", "rejected"), result
    assert result.error.startswith(reason), result.error
'''
