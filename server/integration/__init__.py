"""The integration service: receives escalation packages from handlers (docs/integration.md).

It stores sealed packages it cannot read, after checking who delivered them
against the directory it verified itself from the public intake, and answers
each with a signed receipt (docs/protocol.md, section 17). The officer's vault,
not this process, holds the keys that open them.
"""

from .app import create_integration_app

__all__ = ["create_integration_app"]
