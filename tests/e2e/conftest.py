import pytest

from .harness import Emulator


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """One emulator process per test module (a module may override it per test)."""
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    yield emu
    emu.stop()


@pytest.fixture
def own_emulator(tmp_path):
    """An emulator process for this test alone (tests that count connections or kill things)."""
    emu = Emulator(tmp_path / "emu")
    yield emu
    emu.stop()


@pytest.fixture
def well_behaved(emulator):
    """No fault rule left over from the test before, none left for the next one."""
    emulator.clear_faults()
    yield
    emulator.clear_faults()
