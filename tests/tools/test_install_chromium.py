"""scripts/install_chromium.sh, the README set-up's browser step, on stand-in commands: as root
it installs through apt-get, with a password-less sudo it installs through sudo, and where it
cannot install it fails under CI=true (so CI cannot pass by skipping the browser test) and
only notes it elsewhere. The stand-ins are ``id``, ``apt-get`` and ``sudo`` on a PATH with
nothing else, so no real package manager runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_chromium.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _stub(path: Path, body: str) -> None:
    path.write_text("#!" + BASH + "\n" + body)
    path.chmod(0o755)


def _run(tmp_path: Path, *, uid: int, sudo: bool, ci: bool, apt_fails: bool = False):
    """Runs the script with PATH holding only stand-ins; returns (result, apt-get call log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("env", "mktemp", "rm", "tail", "chmod", "true"):  # real ones the script and stand-ins use
        (bin_dir / tool).symlink_to(shutil.which(tool))
    _stub(bin_dir / "id", f"echo {uid}\n")
    install = (
        "exit 100\n"
        if apt_fails
        else f'if [ "$1" = install ]; then printf "#!{BASH}\\n" > "{bin_dir}/chromium"; chmod +x "{bin_dir}/chromium"; fi\n'
    )
    _stub(bin_dir / "apt-get", f'echo "apt-get $(id -u) $*" >> "{calls}"\n' + install)
    if sudo:
        # A password-less sudo: `sudo -n CMD...` runs CMD (the stand-in id then says root).
        _stub(bin_dir / "sudo", f'shift; echo "sudo $*" >> "{calls}"; exec "$@"\n')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    if ci:
        env["CI"] = "true"
    result = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_root_installs_with_apt_get_and_reports_the_browser(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, uid=0, sudo=False, ci=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chromium: {tmp_path / 'bin' / 'chromium'}"
    assert calls == ["apt-get 0 update -qq", "apt-get 0 install -y -qq chromium"]


def test_a_user_with_password_less_sudo_installs_through_sudo(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, uid=1000, sudo=True, ci=True)
    assert result.returncode == 0, result.stderr
    assert (
        "sudo apt-get update -qq" in calls
        and "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" in calls
    )


@pytest.mark.parametrize("ci", [True, False])
def test_no_way_to_install_fails_under_ci_and_only_notes_elsewhere(tmp_path: Path, ci: bool) -> None:
    result, calls = _run(tmp_path, uid=1000, sudo=False, ci=ci)
    assert calls == []
    assert result.returncode == (1 if ci else 0)
    assert "cannot be installed here" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_failing_apt_get_is_an_error_with_its_output(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, uid=0, sudo=False, ci=False, apt_fails=True)
    assert result.returncode == 1
    assert "apt-get could not install chromium" in result.stderr


def test_a_browser_already_on_path_installs_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "chromium", "")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CI": "true"}
    result = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"chromium: {bin_dir / 'chromium'}"
