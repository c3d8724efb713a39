"""The component's entry point (what `ebbtide build` hands componentize-py): the world of wit/ebbtide.wit
around the function in `app.py`. Runs at build time too: componentize-py imports this module (and so
app.py) and snapshots the initialized interpreter, so imports cost nothing when an instance starts."""

import gc

import app
import wit_world
from componentize_py_types import Err
from ebbtide_sdk import Function

if not callable(getattr(app, "handle", None)):
    raise SystemExit("app.py must define handle(message), see functions/sdk-python/ebbtide_sdk.py")

_function = Function(app.handle, getattr(app, "init", None))


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        refused = _function.configure(config)
        if refused is not None:
            raise Err(refused)

    def handle_batch(self, records: str) -> str:
        # Latin-1 both ways: one code point per byte (see the world's comment on why a string)
        return _function.handle_batch(records.encode("latin-1")).decode("latin-1")


# Everything imported so far is in the build-time snapshot that instances share copy-on-write. Freezing it
# keeps a full collection from walking (and so writing to, and so copying) those pages in every instance.
gc.freeze()
