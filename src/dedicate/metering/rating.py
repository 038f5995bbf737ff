"""Rating: money for replica time. The one formula for predictions and charges.

Prices are ``Decimal`` cents per replica-minute. Time is prorated per second
(the per-minute price divided by 60). A sixtieth has no finite decimal form, so
exact amounts are ``Fraction``s of a cent; they are rounded once, half-even, to
the cent, where a line of a bill or a prediction is shown. Because nothing is
rounded or truncated before the total, billing two halves of a period gives
exactly the same amount as billing the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

SECONDS_PER_MINUTE = 60


def charge_exact(cents_per_minute: Decimal, replica_seconds: Decimal | int | Fraction) -> Fraction:
    """Exact cents for ``replica_seconds`` of one replica at ``cents_per_minute``."""
    return Fraction(cents_per_minute) * Fraction(replica_seconds) / SECONDS_PER_MINUTE


def round_cents(exact: Fraction | Decimal) -> Decimal:
    """Half-even to the whole cent (Python rounds a Fraction half to even)."""
    return Decimal(round(Fraction(exact)))


@dataclass(frozen=True)
class PricePrediction:
    cents_per_replica_minute: Decimal
    min_replicas: int
    max_replicas: int

    @property
    def cents_per_hour_at_min(self) -> Decimal:
        return round_cents(charge_exact(self.cents_per_replica_minute, 3600) * self.min_replicas)

    @property
    def cents_per_hour_at_max(self) -> Decimal:
        return round_cents(charge_exact(self.cents_per_replica_minute, 3600) * self.max_replicas)

    def as_dict(self) -> dict[str, object]:
        return {
            "cents_per_replica_minute": float(self.cents_per_replica_minute),
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "cents_per_hour_at_min": float(self.cents_per_hour_at_min),
            "cents_per_hour_at_max": float(self.cents_per_hour_at_max),
            "dollars_per_hour_at_min": float(self.cents_per_hour_at_min / 100),
            "dollars_per_hour_at_max": float(self.cents_per_hour_at_max / 100),
        }


def predict(cents_per_minute: Decimal, min_replicas: int, max_replicas: int) -> PricePrediction:
    return PricePrediction(cents_per_minute, min_replicas, max_replicas)
