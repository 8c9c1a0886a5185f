"""Airflow integration for DAG authors (DAG factory, operators); import like a provider."""
