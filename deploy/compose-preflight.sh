#!/bin/sh
# docker-compose.yml's `preflight` service: every other service waits for it to exit 0.
# It refuses to start the stack while a secret in .env is empty, still a `change-me`
# placeholder of deploy/env.example, or shorter than 8 characters, naming each one.
# The values are never printed. Run it by hand the same way:
#   env $(grep -v '^#' .env | xargs) sh deploy/compose-preflight.sh
set -u
USERS="MINIO_ROOT_USER"
SECRETS="MINIO_ROOT_PASSWORD MYSQL_ROOT_PASSWORD MYSQL_PASSWORD PLANTS_API_KEYS
MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SECRET_KEY ZENML_DEFAULT_PASSWORD GRAFANA_ADMIN_PASSWORD"
status=0
for name in $USERS $SECRETS; do
  eval "value=\${$name:-}"
  case "$value" in
    "")
      echo "preflight: $name is empty: set it in .env"; status=1; continue ;;
    *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*)
      echo "preflight: $name is still the change-me placeholder of deploy/env.example: replace it in .env"
      status=1; continue ;;
  esac
  case " $USERS " in
    *" $name "*) ;;
    *) if [ "${#value}" -lt 8 ]; then
         echo "preflight: $name is shorter than 8 characters: use a long random value"; status=1
       fi ;;
  esac
done
if [ "$status" -eq 0 ]; then
  echo "preflight: every secret in .env is set"
else
  echo "preflight: refusing to start (see deploy/env.example)"
fi
exit "$status"
