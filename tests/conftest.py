import pytest
import torch


@pytest.fixture(scope="module")
def float64():
    """Run a test module in float64 (restoring the default dtype afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
