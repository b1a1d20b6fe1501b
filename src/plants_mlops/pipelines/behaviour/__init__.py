"""Behaviour pipeline: invariance, minimum functionality and OOD figures of the model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
