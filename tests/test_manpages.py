"""Man pages: one per command plus the overview, listing every option, shipped in the wheel."""
import sys
import sysconfig
from pathlib import Path

from soprano.cli import build_parser
from soprano.cli.manpages import render


def options_by_command():
    parser = build_parser("1.2.3")
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: [flag for action in p._actions for flag in action.option_strings
                   if action.dest != "help"]
            for name, p in sub.choices.items()}


def roff(flag: str) -> str:
    return flag.replace("-", "\\-")


def test_every_command_page_lists_every_option():
    pages = render("1.2.3")
    commands = options_by_command()
    assert set(pages) == {"soprano-tts.1"} | {f"soprano-tts-{c}.1" for c in commands}
    for name, flags in commands.items():
        page = pages[f"soprano-tts-{name}.1"]
        assert '"soprano\\-tts 1.2.3"' in page.splitlines()[0]
        for flag in flags:
            assert roff(flag) in page, (name, flag)
            assert roff(flag) in pages["soprano-tts.1"], (name, flag)


def test_environment_does_not_leak_into_pages(monkeypatch):
    monkeypatch.setenv("SOPRANO_PORT", "4242")
    assert "4242" not in render("1.2.3")["soprano-tts-serve.1"]


def test_pages_are_installed_with_the_package():
    data = Path(sysconfig.get_path("data", vars={"base": sys.prefix}))
    installed = data / "share" / "man" / "man1"
    for name in render("0"):
        assert (installed / name).is_file(), installed / name


def test_pages_build_without_heavy_imports(tmp_path):
    """The wheel build runs this in an environment with only the build requirements."""
    import subprocess
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'numpy', 'tqdm', 'huggingface_hub', 'tornado', 'soxr',
                                  'safetensors', 'tokenizers', 'av', 'prometheus_client'):
            raise ImportError('not in the build environment: ' + name)
sys.meta_path.insert(0, Block())
from soprano.cli.manpages import main
raise SystemExit(main([{str(tmp_path)!r}, '9.9']))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "soprano-tts-serve.1").read_text().startswith(".TH")
