import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from torch.overrides import _get_current_function_mode_stack  # noqa: E402


@pytest.fixture(autouse=True)
def no_scratch_mode_leaks():
    """No test may leave torch's layers routed to the scratch ops (cnnlab.d2l's process-wide default): every
    later comparison with torch would then compare the scratch ops with themselves."""
    yield
    stack = _get_current_function_mode_stack()
    assert not stack, f"a torch function mode was left active: {stack}"
