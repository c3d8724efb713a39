"""What `ebbtide bench` was asked to measure, checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import implementations as impls
from .stats import parse_rate


@dataclass
class BenchOptions:
    orders: int | None = None  # burst size: 10,000 (2,000 with --quick)
    repeats: int | None = None  # alternating rounds, one timed burst of each implementation per round: 5 (1 with --quick)
    sustained_s: float | None = None  # seconds of load per rate: 60 (5 with --quick)
    rates: list[str] = field(default_factory=list)  # '50%' of the measured capacity, or orders/s; default 50% 90%
    sustained_target: str = "ebbtide-default"  # or ebbtide-fastest
    tune: bool | None = None  # search the fastest ebbtide configuration (default: yes, not with --quick)
    candidates: list[str] | None = None  # configurations the search tries (default: every one of CANDIDATES)
    soak_minutes: int | None = None  # the soak's minutes per manifest: 30 (2 with --quick)
    soak_manifests: list[str] = field(default_factory=list)  # unordered, ordered (default: both, one after the other)

    def __post_init__(self) -> None:
        """Refuse what cannot be measured, with the option's name (ValueError)."""
        for manifest in self.soak_manifests:
            if manifest not in ("unordered", "ordered"):
                raise ValueError(f"--soak-manifest {manifest!r}: expected unordered or ordered")
        for name in ("orders", "repeats", "sustained_s", "soak_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for rate in self.rates:
            parse_rate(rate)
        if self.sustained_target not in ("ebbtide-default", "ebbtide-fastest"):
            raise ValueError(f"sustained target {self.sustained_target!r}: expected ebbtide-default or ebbtide-fastest")
        for name in self.candidates or []:
            impls.candidate(name)
