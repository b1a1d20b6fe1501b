"""The prediction service: FastAPI app, model manager (hot swap), prediction log.

``create_app(ServingConfig.from_env())`` builds the app; ``plants-mlops serve`` runs it
under uvicorn. See docs/serving.md.
"""
