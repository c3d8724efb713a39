"""Trying a new module version on live traffic: shadow runs, canaries, promotion and offline replay.

compare   what one guest answered for one message, and whether two answers agree (pure)
samples   the first messages of each verdict, kept for `shadow report` (pure)
report    the diff report that `shadow report` and `replay` print (pure)
replay    the live module and a candidate run offline over stored messages (no NATS)
stored    reading samples, dead letters and stream ranges from the server (read only)
state     a function's rollout record, as the CLI writes it and every host follows it (pure)
candidate the candidate module on one host: which messages it takes, its instances, its counters
shadow    a shadow run in the worker: the candidate answers after the live module, judged, never acting
canary    a canary in the worker: the candidate handles a stable share, rolled back past a threshold
store     candidate modules' bytes in the object store, by sha256
follow    a host following its functions' records (KV watch): candidates, promotions, rollbacks
"""
