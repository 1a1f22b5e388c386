"""Where a tuning study lives: tuning.storage, or a SQLite file in the run's tune folder; opened the one way every
step opens it, and shown without its password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.ml.entities import TuningJob

STUDY_DB = "study.db"  # the default storage, in the run's tune folder


def storage_url(config: TuningJob, output_dir: Path) -> str:
    """tuning.storage, or a SQLite file in the run's tune folder."""
    return config.tuning.storage or f"sqlite:///{(output_dir / STUDY_DB).resolve()}"


def open_storage(url: str) -> Any:
    import optuna

    # Optuna's own INFO lines ("A new study created in RDB ...") go to stderr, which Airflow logs as ERROR: one line
    # per trial from us instead. Every step opens the study through here.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SQLite: several processes write one file; a writer waits for the lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def study_attrs(storage: Any, name: str) -> dict[str, Any]:
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:  # no such study
        return {}


def shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
