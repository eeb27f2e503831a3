"""DPM-Solver++(2M) and its stochastic form: seeds, the update rule against a denoiser known in closed
form, the sampled distribution, settings."""

from __future__ import annotations

import pytest
import torch

from components.synthesis.config import DiffusionConfig, SampleConfig, SynthesisError, SynthesizeConfig
from components.synthesis.network import build_network, build_scheduler
from components.synthesis.sampling import DPMSolverPP2M, make_generator, resolve_sampling, sample_images
from tests import builders as b

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (8, 8, 8)


class GaussianDataDenoiser(torch.nn.Module):
    """The exact epsilon of data x_0 ~ N(mu, s^2) per voxel (s = 0: the single volume mu).

    x_t = a_t x_0 + sigma_t eps, so E[eps | x_t] = sigma_t (x_t - a_t mu) / (a_t^2 s^2 + sigma_t^2). Its
    probability-flow ODE keeps z = (x_t - a_t mu) / sqrt(a_t^2 s^2 + sigma_t^2) fixed along a path, so
    the exact end of the ODE from x_T is known (:meth:`ode_end`)."""

    def __init__(self, mu: torch.Tensor, s: float, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.mu, self.s = mu.double(), float(s)
        self.abar = alphas_cumprod.double()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # sample_images reads the device from a parameter
        self.n_prior = 0

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.abar[timesteps].view(-1, 1, 1, 1, 1)
        x_t = x[:, :4].double()
        return ((1 - abar).sqrt() * (x_t - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)).float()

    def ode_end(self, x_T: torch.Tensor) -> torch.Tensor:
        """The clean image the exact ODE reaches from x_T at t = T-1: the posterior mean at t = 0 of
        the ODE's x_0 (the solver's last step returns the predicted x_0 at t = 0)."""
        aT, a0 = self.abar[-1], self.abar[0]
        z = (x_T.double() - aT.sqrt() * self.mu) / (aT * self.s**2 + 1 - aT).sqrt()
        x0 = a0.sqrt() * self.mu + (a0 * self.s**2 + 1 - a0).sqrt() * z
        return self.mu + a0.sqrt() * self.s**2 * (x0 - a0.sqrt() * self.mu) / (a0 * self.s**2 + 1 - a0)


def _toy(s: float):
    diffusion = DiffusionConfig(num_train_timesteps=1000, clip_sample=False)
    mu = 0.6 * torch.sin(torch.arange(4 * 8 * 8 * 8, dtype=torch.float64)).view(4, *SHAPE)
    return diffusion, GaussianDataDenoiser(mu, s, build_scheduler(diffusion).alphas_cumprod)


def _max_error(net, diffusion, sampler, steps, seed=0, eta=0.0):
    labels = torch.zeros((1, *SHAPE), dtype=torch.long)
    x = sample_images(net, labels, 2, diffusion, [make_generator(seed)], sampler=sampler, steps=steps, eta=eta,
                      progress=False)
    x_T = torch.randn((4, *SHAPE), generator=make_generator(seed))  # the initial noise sample_images draws
    # sample_images clips its output to [-1, 1]; clipping both sides cannot hide a larger error
    return float((x[0].double() - net.ode_end(x_T).clamp(-1, 1)).abs().max())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_same_seed_gives_identical_samples(eta):
    net = build_network(b.tiny_synth_config().network, 5, seed=0).eval()
    labels = torch.zeros((2, 8, 8, 8), dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 1
    labels[:, 3:5, 3:5, 3:5] = 3
    diffusion = DiffusionConfig(num_train_timesteps=20)

    def run(seeds):
        return sample_images(net, labels, 5, diffusion, [make_generator(s) for s in seeds], sampler="dpmpp2m",
                             steps=4, eta=eta, progress=False)

    a, c, d = run([1, 2]), run([1, 2]), run([3, 2])
    assert a.shape == (2, 4, 8, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, c)
    assert not torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])  # one generator per volume


def test_a_single_volume_dataset_is_reached():
    diffusion, net = _toy(0.0)
    for steps in (10, 20):
        assert _max_error(net, diffusion, "dpmpp2m", steps) < 1e-4


@pytest.mark.parametrize("steps,tolerance,vs_ddim", [(15, 0.03, 0.6), (20, 0.01, 0.3)])
def test_second_order_lands_on_the_exact_ode_solution_closer_than_ddim(steps, tolerance, vs_ddim):
    """Measured: 15 steps 0.019 (DDIM 0.041), 20 steps 0.0066 (DDIM 0.043), data range [-1, 1]."""
    diffusion, net = _toy(0.5)
    err = _max_error(net, diffusion, "dpmpp2m", steps)
    assert err < tolerance
    assert err < vs_ddim * _max_error(net, diffusion, "ddim", steps)


def test_the_error_falls_at_second_order():
    """Doubling the steps from 10 to 20 cuts the error ~4x or more (2nd order; first order: ~2x);
    dropping the second-order term (DPM-Solver++(1), i.e. DDIM on the same grid) is far worse."""
    diffusion, net = _toy(0.5)
    e10, e20, e40 = (_max_error(net, diffusion, "dpmpp2m", n) for n in (10, 20, 40))
    assert e20 < e10 / 4 and e40 < e20 / 3

    class FirstOrder(DPMSolverPP2M):
        def step(self, model_output, timestep, sample):
            self._prev_x0 = None
            return super().step(model_output, timestep, sample)

    x_T = torch.randn((1, 4, *SHAPE), generator=make_generator(0))
    solver = FirstOrder(net.abar, clip_sample=False)
    solver.set_timesteps(20)
    x = x_T
    for t in solver.timesteps.tolist():
        x, _ = solver.step(net(x, torch.tensor([t])), t, x)
    assert float((x[0].double() - net.ode_end(x_T[0]).clamp(-1, 1)).abs().max()) > 5 * e20


def test_timesteps_clip_and_order_checks():
    abar = build_scheduler(DiffusionConfig(num_train_timesteps=50)).alphas_cumprod
    solver = DPMSolverPP2M(abar, clip_sample=True)
    for n in (1, 2, 7, 30, 50):
        solver.set_timesteps(n)
        ts = solver.timesteps.tolist()
        assert len(ts) == n and ts[0] == 49 and (n == 1 or ts[-1] == 0) and all(u > v for u, v in zip(ts, ts[1:], strict=False))
    solver.set_timesteps(5)
    assert solver.timesteps.tolist() == [49, 28, 12, 3, 0]  # (T-1)(1 - k/4)^2, denser near the data
    uniform = DPMSolverPP2M(abar, spacing="time_uniform")
    uniform.set_timesteps(5)
    assert uniform.timesteps.tolist() == [49, 37, 24, 12, 0]
    x = torch.zeros(1, 4, *SHAPE)
    _, x0 = solver.step(torch.full_like(x, 50.0), 49, x)  # predicted x_0 far out of range: clipped
    assert float(x0.min()) == -1.0
    unclipped = DPMSolverPP2M(abar, clip_sample=False)
    unclipped.set_timesteps(5)
    assert float(unclipped.step(torch.full_like(x, 50.0), 49, x)[1].min()) < -100
    with pytest.raises(SynthesisError, match="expected the timesteps"):
        solver.step(x, 49, x)  # 28 is next
    with pytest.raises(SynthesisError, match="between 1 and T=50"):
        solver.set_timesteps(51)


def test_the_stochastic_solver_samples_the_data_distribution():
    """eta 1 (SDE-DPM-Solver++(2M)) and 0.5 keep the forward process's marginals: on data N(mu, s^2)
    per voxel, the 2048 sampled voxels standardised by the true mu and s reach mean 0 and std 1 as the
    steps grow (measured std over 6 seeds, eta 1: 1.22 at 10 steps, 1.08 at 20, 1.01 at 40, 0.99 at 100).
    Dropping the step noise (eta 1's signal decay without its noise) shrinks the std far below 1."""
    diffusion = DiffusionConfig(num_train_timesteps=1000, clip_sample=False)
    mu = 0.3 * torch.sin(torch.arange(4 * 8 * 8 * 8, dtype=torch.float64)).view(4, *SHAPE)
    net = GaussianDataDenoiser(mu, 0.2, build_scheduler(diffusion).alphas_cumprod)
    labels = torch.zeros((1, *SHAPE), dtype=torch.long)

    def z(eta, steps):
        x = sample_images(net, labels, 2, diffusion, [make_generator(3)], sampler="dpmpp2m", steps=steps, eta=eta,
                          progress=False)
        return (x[0].double() - mu) / 0.2

    for eta in (1.0, 0.5):
        z40 = z(eta, 40)
        assert abs(float(z40.mean())) < 0.1 and abs(float(z40.std()) - 1.0) < 0.06, (eta, float(z40.std()))
        assert abs(float(z(eta, 10).std()) - 1.0) > 2 * abs(float(z40.std()) - 1.0)

    class NoStepNoise(DPMSolverPP2M):
        def step(self, model_output, timestep, sample, noise=None):
            return super().step(model_output, timestep, sample, None if noise is None else torch.zeros_like(noise))

    solver = NoStepNoise(net.abar, clip_sample=False, eta=1.0)
    solver.set_timesteps(20)
    x = torch.randn((1, 4, *SHAPE), generator=make_generator(3), dtype=torch.float64)
    for t in solver.timesteps.tolist():
        x, _ = solver.step(net(x, torch.tensor([t])).double(), t, x, noise=torch.empty_like(x) if solver.needs_noise else None)
    assert float(((x[0] - mu) / 0.2).std()) < 0.5


def test_the_stochastic_step_needs_its_noise():
    abar = build_scheduler(DiffusionConfig(num_train_timesteps=50)).alphas_cumprod
    solver = DPMSolverPP2M(abar, eta=1.0)
    solver.set_timesteps(3)
    x = torch.zeros(1, 4, *SHAPE)
    assert solver.needs_noise
    with pytest.raises(SynthesisError, match="needs a standard-normal noise tensor"):
        solver.step(x, 49, x)
    solver.step(x, 49, x, noise=torch.randn_like(x))  # the failed call did not advance the solver
    solver.step(x, int(solver.timesteps[1]), x, noise=torch.randn_like(x))
    assert not solver.needs_noise  # the last step returns the predicted x_0
    solver.step(x, 0, x)
    with pytest.raises(SynthesisError, match="between 0 \\(ODE\\) and 1"):
        DPMSolverPP2M(abar, eta=1.5)


def test_the_setting_reaches_the_sampler_with_its_eta():
    model = b.tiny_synth_config()
    model = model.model_copy(update={"sample": SampleConfig(sampler="dpmpp2m", steps=12, eta=1.0)})
    run = resolve_sampling(SynthesizeConfig(), model)
    assert (run.sampler, run.steps, run.eta) == ("dpmpp2m", 12, 1.0)
    ddim_profile = b.tiny_synth_config()
    assert (ddim_profile.sample.sampler, ddim_profile.sample.eta) == ("ddim", 1.0)
    run = resolve_sampling(SynthesizeConfig(sampler="dpmpp2m", steps=7), ddim_profile)
    assert (run.sampler, run.steps, run.eta) == ("dpmpp2m", 7, 0.0)  # switching to the solver: the ODE form
    run = resolve_sampling(SynthesizeConfig(sampler="dpmpp2m", eta=0.5), model)
    assert run.eta == 0.5
    # a dpmpp2m block that leaves eta out is the ODE solver, not the SDE that the field's default 1 would give
    bare = model.model_copy(update={"sample": SampleConfig(sampler="dpmpp2m", steps=12)})
    assert bare.sample.eta == 0.0 and resolve_sampling(SynthesizeConfig(), bare).eta == 0.0
    assert SampleConfig.model_validate({"sampler": "dpmpp2m"}).eta == 0.0 and SampleConfig().eta == 1.0
    # switching from a dpmpp2m profile to ddim takes DDIM's own eta 1, not the ODE solver's 0
    assert resolve_sampling(SynthesizeConfig(sampler="ddim"), bare).eta == 1.0
    with pytest.raises(SynthesisError, match="has none"):
        resolve_sampling(SynthesizeConfig(sampler="ddpm", eta=0.5), model)
    with pytest.raises(SynthesisError, match="between 1 and T"):
        resolve_sampling(SynthesizeConfig(sampler="dpmpp2m", steps=10_000), model)


def test_a_model_with_a_prior_samples_through_the_same_network_call():
    """The EDM-preconditioned network with its prior: the untrained model is the linear denoiser
    centred on the prior, so one step lands on the prior whatever the noise (as DDIM does)."""
    cfg = b.tiny_synth_config()
    net = build_network(cfg.network, 5, seed=0, diffusion=cfg.diffusion).eval()
    labels = torch.zeros((2, 16, 16, 16), dtype=torch.long)
    with pytest.raises(SynthesisError, match="trained with a prior"):
        sample_images(net, labels, 5, cfg.diffusion, [make_generator(0)] * 2, sampler="dpmpp2m", steps=2,
                      progress=False)
    prior = torch.full((4, 16, 16, 16), 0.5)
    x = sample_images(net, labels, 5, cfg.diffusion, [make_generator(0), make_generator(1)], sampler="dpmpp2m",
                      steps=1, progress=False, prior=prior)
    torch.testing.assert_close(x, prior[None].expand(2, -1, -1, -1, -1), atol=1e-2, rtol=0)
