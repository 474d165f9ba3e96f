"""The vitjax model zoo: `create_model(name, **overrides)`, `list_models()`."""

from vitjax.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
