"""A local stand-in for SumUp's online checkout API, hosted payment page and webhooks.

See `apps.sumup_sandbox.app` for the HTTP interface and `apps.sumup_sandbox.server` to run one
in a background thread.
"""

from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE, create_app, run
from apps.sumup_sandbox.state import SandboxControls, SandboxState

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MERCHANT_CODE",
    "SandboxControls",
    "SandboxState",
    "create_app",
    "run",
]
