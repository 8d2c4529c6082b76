from django.conf import settings
from django.core.checks import Warning, register

from foundry_integration.config import FoundryConfig


@register()
def foundry_configuration(app_configs, **kwargs):
    """With USE_FOUNDRY_THREADS on by default, say which setting keeps Foundry from working."""
    if not settings.USE_FOUNDRY_THREADS:
        return []
    problem = FoundryConfig.from_settings().problem()
    if not problem:
        return []
    return [
        Warning(
            f"USE_FOUNDRY_THREADS is on but {problem}: conversations stay on local storage.",
            hint="Set the Foundry settings (see the README) or turn the flag off.",
            id="foundry_integration.W001",
        )
    ]
