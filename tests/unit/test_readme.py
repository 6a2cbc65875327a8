"""The README's settings table is the users' reference: it must name every flag and env var."""

from pathlib import Path

from proxy.cli import SERVE_OPTIONS

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_flag_and_env_var_is_documented() -> None:
    for option in SERVE_OPTIONS:
        assert f"| `--{option.flag}` | `{option.env}` |" in README, option.flag


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README
