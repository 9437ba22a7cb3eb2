"""torch.func on the Triton path (the kernels through the interpreter on a CPU): grad of a
functional_call, per-sample gradients (vmap of grad), vmap over a stacked ensemble of weights,
jacrev; each against the same transform of the reference backend. Forward-mode AD and double
backward are clear errors."""

import pytest
import torch
from helpers import kernel_device, triton_available_here
from torch.func import functional_call, grad, jacrev, jvp, stack_module_state, vmap

from convlstm_triton import ConvLSTM2D

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]
TOL = dict(atol=2e-5, rtol=1e-4)


def _pair(**kwargs):
    """The same layer on the Triton path and on the reference, and its parameters."""
    device = kernel_device()
    triton = ConvLSTM2D(4, 3, in_channels=3, padding="same", backend="triton", device=device,
                        **kwargs)
    reference = ConvLSTM2D(4, 3, in_channels=3, padding="same", backend="reference",
                           device=device, **kwargs)
    reference.load_state_dict(triton.state_dict())
    params = {k: v.detach() for k, v in triton.named_parameters()}
    return triton, reference, params


def _loss(layer):
    def loss(params, x):
        return functional_call(layer, params, (x,)).square().mean()
    return loss


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], **TOL), k


def test_grad_of_functional_call_matches_the_reference():
    triton, reference, params = _pair()
    x = torch.randn(2, 3, 5, 4, 3, device=kernel_device())
    _close(grad(_loss(triton))(params, x), grad(_loss(reference))(params, x))


def test_per_sample_gradients_match_the_reference():
    triton, reference, params = _pair(return_sequences=True)
    x = torch.randn(3, 2, 5, 4, 3, device=kernel_device())

    def per_sample(layer):
        loss = _loss(layer)
        return vmap(grad(lambda p, xi: loss(p, xi.unsqueeze(0))), in_dims=(None, 0))(params, x)

    ours, theirs = per_sample(triton), per_sample(reference)
    assert ours["kernel"].shape == (3,) + params["kernel"].shape
    _close(ours, theirs)
    # and they differ per sample (the test can fail)
    assert not torch.allclose(ours["kernel"][0], ours["kernel"][1])


def test_vmap_over_a_stacked_ensemble_matches_the_reference():
    members = [_pair() for _ in range(3)]
    x = torch.randn(2, 2, 5, 4, 3, device=kernel_device())
    for side in (0, 1):
        params, buffers = stack_module_state([m[side] for m in members])
        base = members[0][side]

        def run(p, b, base=base):
            return functional_call(base, (p, b), (x,))

        out = vmap(run)(params, buffers)
        if side == 0:
            ours = out
        else:
            assert torch.allclose(ours, out, **TOL)
    assert ours.shape == (3, 2, 5, 4, 4)


def test_jacrev_matches_the_reference_and_jvp_is_a_clear_error():
    triton, reference, params = _pair()
    x = torch.randn(1, 2, 3, 3, 3, device=kernel_device())

    def out(layer):
        return lambda xi: functional_call(layer, params, (xi,))

    assert torch.allclose(jacrev(out(triton))(x), jacrev(out(reference))(x), **TOL)
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        jvp(out(triton), (x,), (torch.ones_like(x),))
