"""The performance targets of issue #14, printed by each benchmark as met / not met.

A target is a figure from the run against its limit; a target the run did not measure (a phase
that was skipped) says so instead of passing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    # "max": the figure must be at most the limit; "min": at least.
    kind: str
    value: float | None
    unit: str = ""
    how: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured" + (f" ({self.how})" if self.how else "")
        met = self.value <= self.limit if self.kind == "max" else self.value >= self.limit
        return "met" if met else "NOT met"

    def line(self) -> str:
        sign = "<=" if self.kind == "max" else ">="
        goal = f"{sign} {self.limit:g}{self.unit}"
        value = "-" if self.value is None else f"{self.value:.2f}{self.unit}"
        return f"  {self.name:<58}{goal:>12}{value:>12}   {self.verdict}"


def print_targets(targets: list[Target]) -> None:
    print()
    print("Targets (issue #14); each figure is from this run")
    for target in targets:
        print(target.line())
