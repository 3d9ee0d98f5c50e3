"""modelport: a self-hosted inference platform.

Public surface: `BaseService` (the ModelArts inference-code contract for model packages) and
`Client` (the Python SDK of the management API and gateway). Everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["BaseService", "Client", "__version__"]

if TYPE_CHECKING:
    from modelport.client import Client
    from modelport.runtime.base_service import BaseService


def __getattr__(name: str) -> Any:
    # Lazy so that an instance process importing BaseService does not pull in the SDK, and back.
    if name == "BaseService":
        from modelport.runtime.base_service import BaseService

        return BaseService
    if name == "Client":
        from modelport.client import Client

        return Client
    raise AttributeError(name)
