"""The ML pipeline as plain Python: configuration, components and the pipeline runner.

Nothing in this package imports Airflow; `main.py` and the DAGs both call it.
"""
