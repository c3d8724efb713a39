"""A Python function that misbehaves on request, for tests/integration/test_languages.py (the Python
counterpart of tests/guests/chaos.wat). By the payload's first bytes:
X-  Reject("refused by the python chaos guest")
R-  Retry("try again later")
E-  raises RuntimeError("boom")           (a trap to the host: the instance is replaced)
L-  loops forever                         (the fuel limit: a timeout)
anything else: published unchanged to test.out
"""

from ebbtide_sdk import Message, Reject, Retry, publish


def handle(message: Message) -> None:
    kind = message.payload[:2]
    if kind == b"X-":
        raise Reject("refused by the python chaos guest")
    if kind == b"R-":
        raise Retry("try again later")
    if kind == b"E-":
        raise RuntimeError("boom")
    if kind == b"L-":
        while True:
            pass
    publish("test.out", message.payload)
