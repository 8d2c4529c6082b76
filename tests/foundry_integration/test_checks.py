from django.core.management import call_command


def test_check_warns_when_the_default_flag_is_on_but_unconfigured(settings, capsys):
    settings.USE_FOUNDRY_THREADS = True
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = ""
    call_command("check")
    assert "foundry_integration.W001" in capsys.readouterr().err
    settings.AZURE_FOUNDRY_AGENT_ENDPOINT = "https://r.services.ai.azure.com"
    settings.AZURE_FOUNDRY_AGENT_PROJECT = "p"
    call_command("check")
    assert "W001" not in capsys.readouterr().err
