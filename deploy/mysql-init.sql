-- Extra databases on the compose stack's MariaDB: MLflow's and ZenML's stores.
CREATE DATABASE IF NOT EXISTS mlflow;
CREATE DATABASE IF NOT EXISTS zenml;
GRANT ALL PRIVILEGES ON mlflow.* TO 'plants'@'%';
GRANT ALL PRIVILEGES ON zenml.* TO 'plants'@'%';
