"""Commands that work on the project's files: nats-config, new, build."""

from __future__ import annotations

import argparse

from ..broker.users import ADMIN_USER, INGRESS_ENV, OBSERVER_USER, SCALER_USER, inbox_prefix, ingress_subjects, write_bundle
from ..build import build_modules
from ..manifest import LoadedManifest
from ..scaffold import new_function


def nats_config_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    bundle = write_bundle(manifest, args.out)
    print(f"wrote {bundle.server_config} (include it in the nats-server configuration) and, readable only by you:")
    print(
        f"  {bundle.seed_file(ADMIN_USER)}  admin: everything (`ebbtide provision`, operator tools); EBBTIDE_NATS_NKEY_SEED_FILE"
    )
    print(
        f"  {bundle.seed_file(OBSERVER_USER)}  observer: read outboxes, dead letters, status (top, Locust); "
        f"EBBTIDE_NATS_NKEY_SEED_FILE, EBBTIDE_NATS_INBOX_PREFIX={inbox_prefix(OBSERVER_USER)}"
    )
    print(
        f"  {bundle.seed_file(SCALER_USER)}  scaler: every function's lag and its trigger (`ebbtide scaler`, KEDA); "
        f"EBBTIDE_NATS_NKEY_SEED_FILE, EBBTIDE_NATS_INBOX_PREFIX={inbox_prefix(SCALER_USER)}"
    )
    for function in manifest.spec.functions:
        print(
            f"  {bundle.seed_file(function)}  {function}: its own consumer and allowed effects; "
            f"EBBTIDE_NATS_NKEY_SEED_FILE, EBBTIDE_NATS_INBOX_PREFIX={inbox_prefix(function)}"
        )
    print(
        f"  {bundle.folder / INGRESS_ENV}  ingress: publish to {', '.join(ingress_subjects(manifest))} only "
        "(EBBTIDE_NATS_USER / EBBTIDE_NATS_PASSWORD)"
    )
    print(
        f"  {bundle.folder}/<user>.env and <user>.context.json: how another client (nats-py, nats.js, the nats CLI) "
        "connects as each user (URL, key, inbox prefix; README: Connecting with other clients)"
    )
    return 0


def new_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    made = new_function(manifest, args.name, args.lang, folder=args.dir, trigger=args.trigger, output=args.output)
    print(f"wrote {made.source} and {made.test}; added [functions.{args.name}] to {made.manifest}")
    for note in made.notes:
        print(f"note: {note}")
    print(f"next: ebbtide build {args.name} && pytest {made.test.parent}")
    return 0


def build_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    for result in build_modules(manifest, args.modules or None, force=args.force):
        state = "prebuilt" if result.prebuilt else "built" if result.rebuilt else "up to date"
        print(f"{result.module:<16} {state:<11} {result.output} ({result.output.stat().st_size} bytes)")
    if args.precompile:
        from ..precompiled import precompile

        for entry in precompile(manifest):
            print(
                f"{entry.function:<16} {'precompiled':<11} into {manifest.build_dir / 'cache'} "
                f"(for a {entry.memory_reservation >> 20} MiB memory reservation)"
            )
    return 0
