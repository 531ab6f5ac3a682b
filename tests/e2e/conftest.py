import pytest

from .harness import Emulator


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One emulator process per test module (a module may override it per test)."""
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    yield emu
    emu.stop()
