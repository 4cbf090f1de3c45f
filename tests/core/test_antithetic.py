"""VDM21's antithetic grid, the one function behind stratified λ draws (schedules, adaptive schedule, ELBO)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives import schedules


@given(st.integers(1, 64), st.lists(st.integers(1, 4), max_size=2), st.integers(0, 2**31))
def test_antithetic_grid_has_one_point_per_stratum_at_a_common_offset(m, shape, seed):
    grid = schedules.antithetic_grid(m, tuple(shape), torch.Generator().manual_seed(seed))
    assert grid.shape == (m, *shape) and grid.dtype == torch.float64
    assert bool(((grid >= 0) & (grid < 1)).all())
    # one point in each stratum [j/m, (j + 1)/m) per offset
    strata = (grid * m).floor().long().clamp(max=m - 1).sort(0).values
    expected = torch.arange(m).reshape((m,) + (1,) * len(shape)).expand_as(strata)
    assert torch.equal(strata, expected)
    # every point is the first offset moved by a multiple of 1/m (mod 1)
    steps = torch.remainder((grid - grid[:1]) * m, m)
    assert torch.allclose(steps, steps.round(), atol=1e-9)
    # the offsets are the first draws of U(0, 1) from the generator, in the shape's order
    u = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.equal(grid[0], u)


@given(st.integers(1, 50), st.integers(0, 2**31))
def test_stratified_uniform_is_one_antithetic_grid(n, seed):
    ours = schedules.stratified_uniform(n, torch.Generator().manual_seed(seed), stratified=True)
    assert torch.equal(ours, schedules.antithetic_grid(n, (), torch.Generator().manual_seed(seed)))
