"""Prediction server (Flask under gunicorn). Built by the serving issue; nothing here yet."""
