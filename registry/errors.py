"""Errors raised by the registry's writes (registry.crud); all are ValueErrors with a
one-line message.

    RegistryError(ValueError)
    ├── UnknownBackendError      no backend by that name
    ├── DuplicateBackendError    a backend by that name exists
    ├── UnknownKindError         kind is not one of registry.KINDS
    ├── UnknownModelError        no model by that id
    ├── DuplicateModelError      a model (or alias) by that id exists
    ├── AliasInUseError          the alias is taken by another model, or is a model id
    ├── UnknownDeploymentError   the model has no extra deployment on that backend
    ├── DuplicateDeploymentError the model is already deployed on that backend
    ├── InvalidValueError        a number, name, URL, policy or fallback out of range
    └── ConcurrentChangeError    another process changed the same rows first

registry.apikeys adds UnknownKeyError and DuplicateKeyError, for API keys.

The registry knows nothing of HTTP. Models and backends change only through the `irouter`
CLI (registry/cli.py), which prints any RegistryError as a one-line `Error: ...` and exits
with status 2. API keys change through `irouter keys` too, and through the admin endpoints
under /admin/keys (api/blueprints/keys.py), which answer a RegistryError with a 400, 404 or
409 in OpenAI's error shape.
"""

from __future__ import annotations


class RegistryError(ValueError):
    """Base of every registry error; str(err) is a message fit to show an operator."""


class UnknownBackendError(RegistryError):
    """The named backend does not exist."""


class DuplicateBackendError(RegistryError):
    """A backend with that name already exists."""


class UnknownKindError(RegistryError):
    """The backend kind is not one the workers implement."""


class UnknownModelError(RegistryError):
    """The model id does not exist."""


class DuplicateModelError(RegistryError):
    """A model with that id already exists (or the id is some model's alias)."""


class AliasInUseError(RegistryError):
    """The alias already names a model, or collides with a model id."""


class UnknownDeploymentError(RegistryError):
    """The model has no extra deployment on that backend."""


class DuplicateDeploymentError(RegistryError):
    """The model is already deployed on that backend (as its primary or an extra)."""


class InvalidValueError(RegistryError):
    """A field is out of range: empty name, non-positive window, negative price, unknown
    policy, negative priority, non-positive weight, a base_url that is not http(s), an
    api_key_env that is not a variable name, a model falling back to itself, undeploying
    a primary."""


class ConcurrentChangeError(RegistryError):
    """A unique constraint failed at commit: another process wrote the same key first."""
