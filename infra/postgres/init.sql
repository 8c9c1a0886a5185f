-- Creates the Airflow and MLflow metadata databases, each owned by its own role.
-- Runs once, when the postgres-data volume is first initialised
-- (mounted into /docker-entrypoint-initdb.d). The role passwords are read from the
-- container's environment with psql's \getenv (psql >= 15): no secret is written
-- here. If a variable is missing, :'var' stays unexpanded and the script stops
-- with a syntax error (the entrypoint runs psql with ON_ERROR_STOP=1).
\set ON_ERROR_STOP on
\getenv airflow_db_password AIRFLOW_DB_PASSWORD
\getenv mlflow_db_password MLFLOW_DB_PASSWORD

CREATE ROLE airflow LOGIN PASSWORD :'airflow_db_password';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_db_password';

CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE mlflow OWNER mlflow;

-- Each role reaches only its own database.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
GRANT CONNECT ON DATABASE airflow TO airflow;
GRANT CONNECT ON DATABASE mlflow TO mlflow;
