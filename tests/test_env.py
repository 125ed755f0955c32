"""requirements.txt and environment.yml carry the same pins."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-\[\]]+)==(\S+)", l) for l in lines) if m}


def test_environment_yml_matches_requirements():
    req = _pins(ROOT.joinpath("requirements.txt").read_text().splitlines())
    env = _pins(ROOT.joinpath("environment.yml").read_text().splitlines())
    assert req, "no pins found in requirements.txt"
    assert req == env


def test_torch_and_torchvision_pinned_together():
    req = _pins(ROOT.joinpath("requirements.txt").read_text().splitlines())
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def test_installed_versions_match_pins():
    from importlib.metadata import version

    req = _pins(ROOT.joinpath("requirements.txt").read_text().splitlines())
    for name, pin in req.items():
        assert version(name).split("+")[0] == pin, name
