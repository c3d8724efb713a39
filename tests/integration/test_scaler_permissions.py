"""The `scaler` user (KEDA's external scaler, `ebbtide scaler`) against every JetStream API operation and every
subject of the manifest, as test_permissions_matrix.py probes the other users (its server, requests and
probe): it may read every function's consumer info and listen on the triggers (the bell), and nothing else.

The design is written out here, on purpose not computed by the code under test.
"""

from __future__ import annotations

import pytest

from ebbtide.broker.users import SCALER_USER
from tests.integration.test_permissions_matrix import (  # noqa: F401 (setup: the fixture)
    FUNCTIONS,
    INBOXES,
    ROGUE,
    STREAMS,
    SUBJECTS,
    Probe,
    Setup,
    api_requests,
    setup,
    snapshot,
)

SCALER_API = {f"$JS.API.CONSUMER.INFO.ORDERS.{fn}" for fn in FUNCTIONS}  # the lag of every function, nothing more
SCALER_SUBSCRIBE = {"orders.ingress", "orders.express", "orders.standard", f"_ebbtide_inbox.{SCALER_USER}.probe"}
SCALER_INBOX = f"_ebbtide_inbox.{SCALER_USER}.probe"


@pytest.mark.parametrize("user", [SCALER_USER])
async def test_the_scaler_reads_lags_and_rings_bells_only(setup: Setup, user: str) -> None:  # noqa: F811
    before = await snapshot(setup.admin)
    assert set(before.streams) == set(STREAMS) - {ROGUE}
    auth = setup.bundle.scaler()
    probe = await Probe(auth.inbox_prefix).connect(setup.server.url, auth)
    wrong: list[str] = []
    allowed_requests = 0
    try:
        for subject, body in api_requests(user, before):
            allowed = await probe.request(subject, body)
            allowed_requests += allowed
            if allowed != (subject in SCALER_API):
                wrong.append(f"{subject}: {'allowed' if allowed else 'refused'}")
        for subject in (*SUBJECTS, *INBOXES, SCALER_INBOX):
            if await probe.subscribe(subject) != (subject in SCALER_SUBSCRIBE):
                wrong.append(f"subscribe {subject}: {'refused' if subject in SCALER_SUBSCRIBE else 'allowed'}")
        for subject in SUBJECTS:
            if await probe.publish(subject):
                wrong.append(f"publish {subject}: allowed")
        assert not wrong, "scaler, against the design:\n  " + "\n  ".join(wrong)
        assert allowed_requests == len(SCALER_API)
        # Nothing written: every stream, its contents and every consumer as they were.
        after = await snapshot(setup.admin)
        assert after.streams == before.streams and after.consumers == before.consumers
    finally:
        await probe.close()
