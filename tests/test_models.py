"""The world model's math against hand computations, and the RSSM's shapes for both latent kinds."""

import math

import pytest
import torch

from collodreamer.models.losses import (
    categorical_kl,
    gaussian_kl,
    gaussian_nll,
    kl_loss,
    lambda_returns,
    tanh_gaussian_entropy,
)
from collodreamer.models.networks import MLP, ConvDecoder
from collodreamer.models.optim import update_target
from collodreamer.models.rssm import RSSM
from collodreamer.schema import ModelConfig


def gaussian_stats(mean, std):
    return {"mean": torch.tensor(mean, requires_grad=True), "std": torch.tensor(std, requires_grad=True)}


def plain_kl(post, prior):
    return gaussian_kl(post["mean"], post["std"], prior["mean"], prior["std"])


def test_gaussian_kl_matches_torch_distributions():
    p = torch.distributions.Normal(torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0]))
    q = torch.distributions.Normal(torch.tensor([1.0, 0.0]), torch.tensor([1.5, 0.7]))
    expected = torch.distributions.kl_divergence(p, q).sum()
    assert torch.allclose(gaussian_kl(p.loc, p.scale, q.loc, q.scale), expected)


def test_categorical_kl_by_hand():
    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.25, 0.75]]).log()
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    assert torch.allclose(categorical_kl(p, q), expected)


def test_kl_balancing_value_and_gradient_routing():
    """Listing 1: alpha*KL(sg(post)||prior) + (1-alpha)*KL(post||sg(prior)). The value equals the KL;
    the prior gets alpha of the KL's gradient and the posterior 1 - alpha."""
    alpha = 0.8
    post, prior = gaussian_stats([[0.2, -0.4]], [[0.6, 1.1]]), gaussian_stats([[1.0, 0.3]], [[1.3, 0.8]])
    loss, value = kl_loss(plain_kl, post, prior, balance=alpha, free_nats=0.0)
    full = plain_kl(post, prior).mean()
    assert torch.allclose(loss, full) and torch.allclose(value, full)
    balanced = torch.autograd.grad(loss, [*post.values(), *prior.values()])
    plain = torch.autograd.grad(full, [*post.values(), *prior.values()])
    for got, reference in zip(balanced[:2], plain[:2], strict=True):  # posterior side
        assert torch.allclose(got, (1 - alpha) * reference)
    for got, reference in zip(balanced[2:], plain[2:], strict=True):  # prior side
        assert torch.allclose(got, alpha * reference)


def test_unbalanced_kl_is_plain_kl():
    post, prior = gaussian_stats([[0.2]], [[0.6]]), gaussian_stats([[1.0]], [[1.3]])
    loss, _ = kl_loss(plain_kl, post, prior, balance=None, free_nats=0.0)
    assert torch.allclose(loss, plain_kl(post, prior).mean())


@pytest.mark.parametrize("balance", [None, 0.8])
def test_free_nats_clamp(balance):
    post, prior = gaussian_stats([[0.2]], [[0.6]]), gaussian_stats([[0.25]], [[0.62]])
    loss, value = kl_loss(plain_kl, post, prior, balance=balance, free_nats=3.0)
    assert value < 3.0 and loss.item() == pytest.approx(3.0)
    grads = torch.autograd.grad(loss, [*post.values(), *prior.values()], allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)  # below free nats: no pressure


def test_lambda_returns_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0])
    values = torch.tensor([10.0, 20.0, 30.0])
    gamma, lam = 0.9, 0.5
    r2 = 3.0 + gamma * 30.0  # last step bootstraps from its value
    r1 = 2.0 + gamma * ((1 - lam) * 20.0 + lam * r2)
    r0 = 1.0 + gamma * ((1 - lam) * 10.0 + lam * r1)
    returns = lambda_returns(rewards, values, gamma, lam)
    assert torch.allclose(returns, torch.tensor([r0, r1, r2]))
    # lam = 1: Monte-Carlo returns with a bootstrap; lam = 0: one-step TD targets.
    mc = lambda_returns(rewards, values, gamma, 1.0)
    assert mc[0].item() == pytest.approx(1 + gamma * 2 + gamma**2 * 3 + gamma**3 * 30)
    td = lambda_returns(rewards, values, gamma, 0.0)
    assert torch.allclose(td, rewards + gamma * values)


def test_gaussian_nll_by_hand():
    mean, target = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(gaussian_nll(mean, target, 1), torch.tensor([2.5, 2.0]))


def test_target_update_polyak():
    online, target = MLP(2, 1, 4, 1), MLP(2, 1, 4, 1)
    before = [p.clone() for p in target.parameters()]
    update_target(target, online, 0.25)
    for t, o, b in zip(target.parameters(), online.parameters(), before, strict=True):
        assert torch.allclose(t, 0.25 * o + 0.75 * b)
    update_target(target, online, 1.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True))


def test_straight_through_categorical_passes_gradients():
    config = ModelConfig(latent="categorical", stoch=3, classes=4, deter=8, hidden=8)
    rssm = RSSM(config, action_dim=2, embed_dim=5)
    logits = torch.randn(6, 12, requires_grad=True)
    sample = rssm._sample(rssm._stats(logits))
    one_hot = sample.detach().reshape(6, 3, 4)
    assert torch.allclose(one_hot.sum(-1), torch.ones(6, 3))
    assert torch.allclose(one_hot, one_hot.round(), atol=1e-6)  # one-hot values, probs only in the gradient
    (sample * torch.randn_like(sample)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_observe_and_imagine_shapes(latent):
    config = ModelConfig(latent=latent, deter=8, stoch=3, classes=4, hidden=8)
    rssm = RSSM(config, action_dim=2, embed_dim=5)
    stoch = 12 if latent == "categorical" else 3
    assert rssm.feature_dim == stoch + 8
    B, T = 4, 7
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    post, prior = rssm.observe(torch.randn(B, T, 5), torch.randn(B, T, 2), is_first)
    assert post["deter"].shape == (B, T, 8) and post["stoch"].shape == (B, T, stoch)
    assert set(prior) == ({"deter", "logp"} if latent == "categorical" else {"deter", "mean", "std"})
    assert rssm.kl(post, prior).shape == (B, T)
    start = {k: v[:, -1] for k, v in post.items()}
    features, actions = rssm.imagine(start, lambda f: torch.tanh(f[..., :2]), horizon=5)
    assert features.shape == (6, B, stoch + 8) and actions.shape == (5, B, 2)
    features, _ = rssm.imagine(start, torch.zeros(3, B, 2), horizon=3)
    assert features.shape == (4, B, stoch + 8)
    # mu(z, a) is deterministic and batched over any leading dimensions.
    z, a = torch.randn(2, 3, stoch + 8), torch.randn(2, 3, 2)
    assert torch.equal(rssm.next_feature_mean(z, a), rssm.next_feature_mean(z, a))
    assert rssm.next_feature_mean(z, a).shape == (2, 3, stoch + 8)
    # Its stochastic twin draws the stochastic part from the same prior; the deterministic part is equal.
    torch.manual_seed(0)
    draws = rssm.next_feature_sample(z.expand(4000, 2, 3, -1), a.expand(4000, 2, 3, -1))
    mean = rssm.next_feature_mean(z, a)
    assert torch.allclose(draws[..., stoch:], mean[..., stoch:].expand_as(draws[..., stoch:]), atol=1e-6)
    assert not torch.equal(draws[0, ..., :stoch], mean[..., :stoch])
    assert torch.allclose(draws[..., :stoch].mean(0), mean[..., :stoch], atol=0.06)
    if latent == "categorical":  # one-hot draws of each latent's classes
        one_hot = draws[..., :stoch].reshape(4000, 2, 3, 3, 4)
        assert torch.allclose(one_hot.sum(-1), torch.ones(4000, 2, 3, 3))
        assert torch.allclose(one_hot, one_hot.round(), atol=1e-6)


def test_is_first_resets_the_state():
    config = ModelConfig(deter=8, stoch=3, hidden=8)
    rssm = RSSM(config, action_dim=2, embed_dim=5)
    torch.manual_seed(0)
    embed, action = torch.randn(1, 6, 5), torch.randn(1, 6, 2)
    is_first = torch.tensor([[True, False, False, True, False, False]])
    post, _ = rssm.observe(embed, action, is_first)
    fresh, _ = rssm.observe(embed[:, 3:], action[:, 3:], is_first[:, 3:])
    # After the reset at t=3 the deterministic path forgets everything before it.
    assert torch.allclose(post["deter"][:, 3], fresh["deter"][:, 0])
    assert not torch.allclose(post["deter"][:, 2], fresh["deter"][:, 0])


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
@pytest.mark.parametrize("gru_norm", [False, True])
def test_hand_derived_dynamics_jacobian_matches_autograd(latent, gru_norm):
    from torch.func import jacrev, vmap

    torch.manual_seed(0)
    config = ModelConfig(
        latent=latent, deter=12, stoch=4, classes=3, hidden=10, gru_norm=gru_norm, unimix=0.01
    )
    rssm = RSSM(config, action_dim=2, embed_dim=5)
    if gru_norm:
        with torch.no_grad():
            rssm.gru.norm.weight.uniform_(0.5, 1.5)
            rssm.gru.norm.bias.uniform_(-0.2, 0.2)
    z, a = torch.randn(7, rssm.feature_dim), torch.randn(7, 2)
    mean, jacobian = rssm.next_feature_mean_jacobian(z, a)
    jac_z, jac_a = vmap(jacrev(rssm.next_feature_mean, argnums=(0, 1)))(z, a)
    assert torch.allclose(mean, rssm.next_feature_mean(z, a), atol=1e-6)
    assert torch.allclose(jacobian, torch.cat([jac_z, jac_a], -1), atol=1e-5)


def test_running_norm_matches_the_statistics_of_all_batches():
    from collodreamer.models.networks import RunningNorm

    torch.manual_seed(0)
    norm = RunningNorm(3)
    x = torch.randn(5, 3)
    assert torch.allclose(norm(x), x, atol=1e-5)  # identity before any update
    batches = [torch.randn(n, 3) * torch.tensor([5.0, 0.1, 1.0]) + 2.0 for n in (7, 20, 4)]
    for batch in batches:
        norm.update(batch)
    everything = torch.cat(batches).double()
    assert torch.allclose(norm.mean, everything.mean(0))
    assert torch.allclose(norm.var, everything.var(0, unbiased=False))
    standardised = norm(torch.cat(batches))
    assert torch.allclose(standardised.std(0, unbiased=False), torch.ones(3, dtype=torch.float32), atol=1e-3)


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (2.0, 0.5), (4.0, 0.1)])
def test_tanh_gaussian_entropy_matches_numerical_integration(mean, std):
    u = torch.linspace(mean - 10 * std, mean + 10 * std, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * ((u - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    # a = tanh(u) has density p(u) / (1 - tanh(u)^2); H[a] = -E_u[log p_a(tanh(u))]
    log_density_a = torch.log(density) - torch.log1p(-(torch.tanh(u) ** 2))
    exact = -(density * log_density_a).sum() * (u[1] - u[0])
    torch.manual_seed(0)
    shape = (400_000, 1)
    estimate = tanh_gaussian_entropy(
        torch.full(shape, mean, dtype=torch.float64),
        torch.full(shape, std, dtype=torch.float64),
        torch.randn(shape, dtype=torch.float64),
    ).mean()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.01)


def test_tanh_gaussian_entropy_gradient_pulls_saturated_actions_back():
    # d/du log(1 - tanh(u)^2) = -2 tanh(u) and d/dstd log(std) = 1/std: at a saturated mean the bonus
    # pushes the mean towards 0 with force about 2 and the std up, where tanh itself passes ~1e-4.
    mean = torch.tensor([4.9, -4.9], requires_grad=True)
    std = torch.tensor([0.01, 0.01], requires_grad=True)
    tanh_gaussian_entropy(mean, std, torch.zeros(2)).backward()
    assert torch.allclose(mean.grad, -2.0 * torch.tanh(mean.detach()), atol=1e-6)
    assert torch.allclose(std.grad, torch.full((2,), 100.0), rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_decoder_matches_its_layers_applied_in_turn(channels_last):
    """The decoder computes its first transposed conv (on a 1x1 input) as a matrix product."""
    decoder = ConvDecoder(20, 4)
    if channels_last:
        decoder.to(memory_format=torch.channels_last)
    feature = torch.randn(3, 5, 20)
    hidden = decoder.linear(feature.reshape(-1, 20)).reshape(-1, 32 * 4, 1, 1)
    expected = decoder.net(hidden).permute(0, 2, 3, 1).reshape(3, 5, 64, 64, 3)
    assert torch.allclose(decoder(feature), expected, atol=1e-6)
