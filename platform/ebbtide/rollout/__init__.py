"""Trying a new module version on live traffic: shadow runs, canaries, promotion and offline replay.

compare   what one guest answered for one message, and whether two answers agree (pure)
samples   the first messages of each verdict, kept for `shadow report` (pure)
"""
