"""The prediction server: a Flask app under gunicorn, its model store and the store's commands.

A leaf: it imports nothing from the pipeline side (include/, dags/, plugins/), nor MLflow or Airflow, so an
EC2 host installs it alone from serving/requirements.txt.
"""
