"""Trying a new module version on live traffic: shadow runs, canaries, promotion and offline replay.

compare   what one guest answered for one message, and whether two answers agree (pure)
samples   the first messages of each verdict, kept for `shadow report` (pure)
report    the diff report that `shadow report` and `replay` print (pure)
replay    the live module and a candidate run offline over stored messages (no NATS)
stored    reading samples, dead letters and stream ranges from the server (read only)
"""
