-- Extra databases on the compose stack's MariaDB: MLflow's and ZenML's stores.
CREATE DATABASE IF NOT EXISTS mlflow;
CREATE DATABASE IF NOT EXISTS zenml;
GRANT ALL PRIVILEGES ON mlflow.* TO 'plants'@'%';
GRANT ALL PRIVILEGES ON zenml.* TO 'plants'@'%';
-- MLflow's basic-auth app keeps users and permissions in their own database.
CREATE DATABASE IF NOT EXISTS mlflow_auth;
GRANT ALL PRIVILEGES ON mlflow_auth.* TO 'plants'@'%';
