"""The ML core as plain Python: configuration, the stage components, the registry and tracking helpers.

Nothing in this package imports Airflow or the prediction server; include/pipeline.py runs the stages,
include/release/ ships what they produce.
"""
