-- Run once, when PostgreSQL starts on an empty volume: the auth app's accounts and permissions
-- live in their own database beside MLflow's (docker/mlflow-auth.ini).
CREATE DATABASE mlflow_auth;
