"""How long a migration waits for a lock, from the environment: a value it cannot use is refused
in one line naming the setting, before anything connects."""

from __future__ import annotations

import pytest

from ops.db.migrate import LockPatience, MigrateError


def test_defaults_wait_a_second_ten_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROSE_MIGRATION_LOCK_TIMEOUT", raising=False)
    monkeypatch.delenv("ROSE_MIGRATION_LOCK_TRIES", raising=False)
    patience = LockPatience.from_environment()
    assert (patience.timeout, patience.tries, patience.setting) == (1.0, 10, "1000ms")


def test_a_fraction_of_a_second_is_whole_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROSE_MIGRATION_LOCK_TIMEOUT", "0.25")
    monkeypatch.setenv("ROSE_MIGRATION_LOCK_TRIES", "3")
    patience = LockPatience.from_environment()
    assert (patience.setting, patience.tries) == ("250ms", 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ROSE_MIGRATION_LOCK_TIMEOUT", "soon", "ROSE_MIGRATION_LOCK_TIMEOUT='soon': not a number"),
        ("ROSE_MIGRATION_LOCK_TIMEOUT", "0", "ROSE_MIGRATION_LOCK_TIMEOUT=0: seconds, above 0"),
        ("ROSE_MIGRATION_LOCK_TIMEOUT", "-1", "ROSE_MIGRATION_LOCK_TIMEOUT=-1: seconds, above 0"),
        ("ROSE_MIGRATION_LOCK_TIMEOUT", "nan", "ROSE_MIGRATION_LOCK_TIMEOUT=nan: seconds"),
        ("ROSE_MIGRATION_LOCK_TRIES", "0", "ROSE_MIGRATION_LOCK_TRIES=0: a whole number"),
        ("ROSE_MIGRATION_LOCK_TRIES", "2.5", "ROSE_MIGRATION_LOCK_TRIES='2.5': not a number"),
    ],
)
def test_a_value_it_cannot_use_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(MigrateError) as refused:
        LockPatience.from_environment()
    assert str(refused.value).startswith(message), str(refused.value)
