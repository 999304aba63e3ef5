"""The installer's torch choice, driven through a stand-in interpreter that plays pip and the import check.

The stand-in keeps what is "installed" in a JSON file: ``-m pip install --dry-run --report F torch
torchvision`` writes the resolver's choice, ``-m pip install torch==X torchvision==Y`` installs a pair
unless the machine's caps forbid it, and the import check passes only for a matched pair.
"""

import json
import sys
import textwrap

import pytest

from scripts import host

FAKE = textwrap.dedent("""
    import json, sys
    state_file = {state!r}
    state = json.load(open(state_file))
    args = sys.argv[1:]
    if args[:2] == ["-m", "pip"]:
        if "--dry-run" in args:
            if state["resolver"] is None:
                sys.exit(1)
            report = args[args.index("--report") + 1]
            torch, vision = state["resolver"]
            json.dump({{"install": [{{"metadata": {{"name": "torch", "version": torch}}}},
                                    {{"metadata": {{"name": "torchvision", "version": vision}}}}]}}, open(report, "w"))
            sys.exit(0)
        pins = dict(a.split("==") for a in args if "==" in a)
        if pins.get("torch") in state["forbidden"]:
            sys.exit(1)
        state["installed"] = [pins["torch"], pins["torchvision"]]
        state["installs"] += 1
        json.dump(state, open(state_file, "w"))
        sys.exit(0)
    if args[0] == "-c":
        if state["installed"] and tuple(state["installed"]) in [tuple(p) for p in state["matched"]]:
            print(state["installed"][0] + "+cpu", state["installed"][1] + "+cpu")
            sys.exit(0)
        sys.exit(1)
    sys.exit(2)
""")


@pytest.fixture
def fake_python(tmp_path):
    def make(resolver, matched, forbidden=(), installed=None):
        state = tmp_path / "state.json"
        state.write_text(
            json.dumps(
                {
                    "resolver": resolver,
                    "matched": matched,
                    "forbidden": list(forbidden),
                    "installed": installed,
                    "installs": 0,
                }
            )
        )
        script = tmp_path / "python"
        script.write_text(f"#!{sys.executable}\n" + FAKE.format(state=str(state)))
        script.chmod(0o755)
        return str(script), lambda: json.loads(state.read_text())

    return make


def test_the_resolvers_choice_is_installed_and_checked(fake_python):
    python, state = fake_python(("2.14.1", "0.29.1"), matched=[("2.14.1", "0.29.1")])
    assert host.install_torch(python, say=lambda _: None) == "2.14.1+cpu 0.29.1+cpu"
    assert state()["installed"] == ["2.14.1", "0.29.1"] and state()["installs"] == 1


def test_a_working_pair_that_is_the_resolvers_choice_is_kept(fake_python):
    python, state = fake_python(("2.14.1", "0.29.1"), matched=[("2.14.1", "0.29.1")], installed=["2.14.1", "0.29.1"])
    assert host.install_torch(python, say=lambda _: None) == "2.14.1+cpu 0.29.1+cpu"
    assert state()["installs"] == 0


def test_a_mismatched_choice_falls_back_to_a_known_matched_pair_the_caps_allow(fake_python):
    # the resolver pairs an uncapped torch with an older torchvision that imports but has no kernels for it
    python, state = fake_python(("2.15.0", "0.29.1"), matched=[("2.14.1", "0.29.1")], forbidden={"2.15.0"})
    assert host.install_torch(python, say=lambda _: None) == "2.14.1+cpu 0.29.1+cpu"


def test_nothing_that_fits_is_one_sentence(fake_python):
    python, _ = fake_python(None, matched=[], forbidden={p[0] for p in host.KNOWN_PAIRS})
    with pytest.raises(
        host.HostError,
        match=r"^no torch / torchvision pair could be installed and used here \(2\.15\.0"
        r"/0\.29\.2: not installable here;.*pip constraints allow one of",
    ):
        host.install_torch(python, say=lambda _: None)
