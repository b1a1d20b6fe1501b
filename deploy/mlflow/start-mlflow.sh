#!/bin/sh
# Start the MLflow tracking server behind MLflow's `basic-auth` app: whoever can reach an
# open server can move the `champion` alias the API follows. Used by docker-compose.yml
# and by the Kubernetes Deployment (mounted from a ConfigMap). Everything comes from the
# environment; nothing secret is written anywhere but the ini file in $TMPDIR (the auth
# database URI carries a password), which lives in the container's scratch space.
#   MLFLOW_BACKEND_STORE_URI       tracking store: a SQLAlchemy URL of the mlflow database
#   MLFLOW_AUTH_DATABASE_URI       users and permissions: a URL of another database
#   MLFLOW_AUTH_ADMIN_PASSWORD     the admin user's password on first start (MLflow reads it)
#   MLFLOW_FLASK_SERVER_SECRET_KEY CSRF key, the same on every replica
#   MLFLOW_ARTIFACTS_DESTINATION   e.g. s3://plants-mlops/mlflow-artifacts
#   MLFLOW_ALLOWED_HOSTS           Host headers accepted (MLflow's default is localhost only)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  default false here: MLflow 3's job runner (it and
#                                  8 Huey consumers per server) runs GenAI jobs this
#                                  project never submits
# Secrets as files (Kubernetes mounts them so): for each secret X below, X_FILE names a
# file holding its value. MLFLOW_DB_PASSWORD(_FILE) is put into both database URIs, which
# then carry the user and no password (letters and digits only: it is not URL-quoted).
set -eu
for var in MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
  MLFLOW_DB_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  eval "file=\${${var}_FILE:-} current=\${${var}:-}"
  [ -n "$file" ] || continue
  if [ -n "$current" ]; then
    echo "start-mlflow.sh: both $var and ${var}_FILE are set: set one" >&2
    exit 1
  fi
  value=$(cat "$file")
  export "$var=$value"
done
if [ -n "${MLFLOW_DB_PASSWORD:-}" ]; then
  case "$MLFLOW_DB_PASSWORD" in
    *[!A-Za-z0-9]*) echo "start-mlflow.sh: MLFLOW_DB_PASSWORD must be letters and digits" >&2; exit 1 ;;
  esac
  # scheme://user@host/db gets ":<password>" after the user
  with_password() { printf '%s' "$1" | sed "s#^\([A-Za-z0-9+]*://[^:@/]*\)@#\1:${MLFLOW_DB_PASSWORD}@#"; }
  MLFLOW_BACKEND_STORE_URI=$(with_password "${MLFLOW_BACKEND_STORE_URI:-}")
  MLFLOW_AUTH_DATABASE_URI=$(with_password "${MLFLOW_AUTH_DATABASE_URI:-}")
fi
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION}"

ini="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
# configparser treats % as interpolation: double it in the URI.
auth_uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
umask 077
cat > "$ini" <<INI
[mlflow]
default_permission = READ
database_uri = $auth_uri
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
INI
export MLFLOW_AUTH_CONFIG_PATH="$ini"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

exec mlflow server --app-name basic-auth \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost:*,127.0.0.1:*}"
