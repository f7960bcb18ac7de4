"""`longshort.workspace`: the fused kernels' large buffers come back for the next call, and
never while anything still holds them."""

from __future__ import annotations

import pytest
import torch

import longshort as ls
from longshort import workspace

pytestmark = pytest.mark.skipif(workspace._use_count is None, reason="this torch cannot count a storage's users")

SIZE = (64, 1024)  # 256 KiB of float32: above MIN_BYTES


@pytest.fixture(autouse=True)
def empty_workspace():
    workspace.clear()
    yield
    workspace.clear()


def test_a_freed_buffer_is_handed_out_again():
    like = torch.empty(())
    first = workspace.empty(like, *SIZE)
    address = first.data_ptr()
    del first
    again = workspace.empty(like, 1024, 64)  # the same size in another shape
    assert again.data_ptr() == address and again.shape == (1024, 64)


@pytest.mark.parametrize("holder", ["tensor", "view", "saved"])
def test_a_buffer_still_held_is_not(holder):
    like = torch.empty(())
    buffer = workspace.empty(like, *SIZE)
    address = buffer.data_ptr()
    weight = torch.ones(SIZE, requires_grad=True)
    kept = {"tensor": buffer, "view": buffer[1:], "saved": weight * buffer}[holder]  # a product saves its other factor
    if holder != "tensor":
        del buffer
    other = workspace.empty(like, *SIZE)
    assert other.data_ptr() != address
    if holder == "saved":
        kept.sum().backward()  # frees the saved buffer
        del kept
        assert workspace.empty(like, *SIZE).data_ptr() == address


def test_two_buffers_of_one_call_are_two():
    like = torch.empty(())
    h_all, c_all = workspace.empty(like, *SIZE), workspace.empty(like, *SIZE)
    assert h_all.data_ptr() != c_all.data_ptr()


def test_dtype_inference_and_small_sizes_are_kept_apart():
    like = torch.empty(())
    address = workspace.empty(like, *SIZE).data_ptr()
    assert workspace.empty(like.double(), SIZE[0], SIZE[1] // 2).data_ptr() != address  # same bytes, other dtype
    with torch.inference_mode():
        inference = workspace.empty(like, *SIZE)
    assert inference.is_inference() and inference.data_ptr() != address
    assert workspace.empty(like, *SIZE).data_ptr() == address
    small = workspace.empty(like, 4, 4)
    assert len(workspace._kept) == 3 and small.shape == (4, 4)  # small blocks are left to malloc


def test_at_most_the_limit_is_kept(monkeypatch):
    monkeypatch.setattr(workspace, "LIMIT_BYTES", 3 * 64 * 1024 * 4)
    like = torch.empty(())
    for rows in (64, 65, 66, 67):
        workspace.empty(like, rows, 1024)
    assert [flat.numel() for flat in workspace._kept] == [66 * 1024, 67 * 1024]  # the oldest went first


def test_a_training_loop_reuses_its_buffers_and_agrees():
    """Two steps of a fused GRU: the second takes the buffers the first freed, and computes the same."""
    torch.manual_seed(0)
    layer = ls.GRU(64, input_size=8, return_sequences=True, implementation="fused")
    x = torch.randn(32, 50, 8)
    results, kept = [], []
    for _ in range(2):
        layer.zero_grad()
        y = layer(x)
        y.square().sum().backward()
        results.append([y.detach().clone(), *(p.grad.clone() for p in layer.parameters())])
        del y
        kept.append([flat.data_ptr() for flat in workspace._kept])
    assert len(kept[0]) > 0 and sorted(kept[1]) == sorted(kept[0])  # no new buffer the second time
    for first, second in zip(*results):
        torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("layer_class", [ls.LSTM, ls.LayerNormLSTM, ls.GRU, ls.SimpleRNN])
def test_the_fused_kernels_agree_with_the_loop_on_kept_buffers(layer_class):
    """Buffers large enough to be kept (h and c of the LSTM are the same size: two buffers), over
    two training steps, the second on the buffers of the first, against the readable loop."""
    torch.manual_seed(0)
    fused = layer_class(32, input_size=8, return_sequences=True, implementation="fused").double()
    loop = layer_class(32, input_size=8, return_sequences=True, implementation="loop").double()
    loop.load_state_dict(fused.state_dict())
    for step in range(2):
        x = torch.randn(32, 40, 8, dtype=torch.float64)
        grads = []
        for layer in (fused, loop):
            layer.zero_grad()
            y = layer(x)
            y.square().sum().backward()
            grads.append([y.detach().clone(), *(p.grad.clone() for p in layer.parameters())])
            del y
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert len(workspace._kept) > 0
