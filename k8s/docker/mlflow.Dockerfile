# syntax=docker/dockerfile:1
# The MLflow tracking server of k8s/base/mlflow.yaml: basic auth (mlflow[auth] brings Flask-WTF), PostgreSQL
# (psycopg2) as the backend store, S3-compatible buckets (boto3) as an optional artifact store.
#
#   docker build -f k8s/docker/mlflow.Dockerfile -t REGISTRY/crossover-mlflow:3.17.2 .
#
# Keep MLFLOW_VERSION equal to the client's (the `mlflow` of the crossover image) so server and client agree.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" "boto3==${BOTO3_VERSION}" \
    && python -c "import flask_wtf, psycopg2, boto3"
RUN useradd --create-home --uid 1000 --user-group mlflow \
    && mkdir -p /mlflow/artifacts /etc/mlflow-auth \
    && chown -R mlflow:mlflow /mlflow /etc/mlflow-auth
USER 1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
