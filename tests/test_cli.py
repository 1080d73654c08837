from onionmesh.cli import main


def test_cli_without_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "onionmesh" in capsys.readouterr().out
