"""The flights part of ``make demo``: which 2013 days are history and which are served.

Flights keep their own calendar (2013, the data set's year) beside fraud's simulated 2026: each
use case's DAGs have their own data intervals, so the two run side by side on one stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from examples.flights import landing
from flywheel.core.config import Settings


@dataclass(frozen=True)
class FlightsPlan:
    """``history_days`` days from ``start`` to train on, then ``served_days`` days of traffic."""

    start: date = date(2013, 6, 1)
    history_days: int = 14
    served_days: int = 2

    @property
    def history_end(self) -> date:
        return self.start + timedelta(days=self.history_days - 1)

    @property
    def served(self) -> list[date]:
        return [self.history_end + timedelta(days=i) for i in range(1, self.served_days + 1)]

    @property
    def days(self) -> int:
        return self.history_days + self.served_days


def land(settings: Settings, plan: FlightsPlan) -> list[Path]:
    """The feed of every day of the plan, in the landing folder (idempotent)."""
    return landing.write_landing(settings.home / "landing", plan.start, plan.days)
