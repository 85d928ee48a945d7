"""src/tuning/study.py: opening a study's storage."""

import optuna
import pytest
import sqlalchemy.exc

from src.errors import UserError
from src.tuning import study


def test_a_worker_that_loses_the_race_to_create_the_tables_opens_the_storage_the_winner_made(tmp_path, monkeypatch):
    """Two workers started together on a new PostgreSQL database: one creates the tables, the other's CREATE fails
    with a unique violation (seen in tests/test_tune.py's two-worker test); it must open the storage, not stop."""
    real, calls = optuna.storages.RDBStorage, []

    def losing_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TABLE studies", {}, Exception("pg_type_typname_nsp_index"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", losing_once)
    monkeypatch.setattr(study.time, "sleep", lambda seconds: None)
    storage = study.rdb_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_a_storage_that_keeps_failing_is_not_retried_forever(tmp_path, monkeypatch):
    def always(*args, **kwargs):
        raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, Exception("permission denied"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", always)
    monkeypatch.setattr(study.time, "sleep", lambda seconds: None)
    with pytest.raises(sqlalchemy.exc.ProgrammingError):
        study.rdb_storage(f"sqlite:///{tmp_path / 's.db'}")


def test_a_sqlite_file_in_a_missing_folder_is_one_line_that_says_so(tmp_path):
    settings = study.StudySettings("s", [], [], tmp_path, f"sqlite:///{tmp_path / 'no' / 'such' / 's.db'}")
    with pytest.raises(UserError, match=r"--storage sqlite:///.*/no/such/s.db: SQLite cannot create the file there"):
        study.open_study(settings)
