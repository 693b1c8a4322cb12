import pytest
import torch


@pytest.fixture(scope="module")
def float64():
    """Run a test module in float64 (restoring the default dtype afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models run faster without thread start-up, the
    shared CPU is not oversubscribed, and runs compared bit for bit agree."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", params=["torch", "native"])
def kernel_path(request):
    """Run every test of a module that uses this once on each implementation of the fused
    level kernels (PyTorch, then native; native skipped where it does not build)."""
    from treelstm import kernels

    if request.param == "native" and not kernels.native_available():
        pytest.skip("the native level kernels do not build here")
    old = kernels.set_native(request.param == "native")
    yield request.param
    kernels.set_native(old)
