"""Pipeline stages: ingestion, validation, transformation, training, evaluation."""
