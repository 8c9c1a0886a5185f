#!/bin/sh
# MLflow's basic-auth app for compose and Helm (flywheel/stack/security.py is the native twin).
# Its user store's URI (with a password) goes into a 0600 file, never onto a command line:
# MLflow reads it only from MLFLOW_AUTH_CONFIG_PATH. The admin password comes from
# MLFLOW_AUTH_ADMIN_PASSWORD (first start only); the backend store from MLFLOW_BACKEND_STORE_URI.
set -eu
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (the user store)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
umask 077
config="${TMPDIR:-/tmp}/basic_auth.ini"
cat >"$config" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = flywheel-admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# A successful basic-auth check (a PBKDF2 hash, the server's main CPU cost uncached) is reused
# for 60 s per worker; a password change reaches the other workers within that time.
auth_cache_ttl_seconds = 60
auth_cache_max_size = 1000
INI
unset MLFLOW_AUTH_DATABASE_URI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server --app-name basic-auth "$@"
