"""model.precision: bfloat16 conv stacks give finite losses close to float32 ones on a fixed batch,
state models never change, and the fused image term equals the equation's elementwise form."""

from dataclasses import replace

import pytest
import torch

from collodreamer.models.losses import gaussian_nll, image_nll
from collodreamer.models.tensors import uses_bfloat16
from collodreamer.models.world_model import WorldModel
from collodreamer.schema import ModelConfig
from collodreamer.spec import EnvSpec

CONFIG = ModelConfig(deter=32, stoch=8, hidden=32, units=32, cnn_depth=8)
CPU = torch.device("cpu")


def fixed_batch(obs_shape: tuple[int, ...], batch: int = 4, length: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if EnvSpec(obs_shape, 2).pixels:
        obs = torch.randint(0, 256, (batch, length, *obs_shape), generator=generator, dtype=torch.uint8)
    else:
        obs = torch.randn(batch, length, *obs_shape, generator=generator)
    is_first = torch.zeros(batch, length, dtype=torch.bool)
    is_first[:, 0] = True
    return {
        "obs": obs,
        "action": torch.rand(batch, length, 2, generator=generator) * 2 - 1,
        "reward": torch.rand(batch, length, generator=generator),
        "is_first": is_first,
    }


def models(obs_shape: tuple[int, ...], config: ModelConfig = CONFIG) -> dict[str, WorldModel]:
    """A world model per precision, all with the float32 model's initial weights."""
    torch.manual_seed(0)
    built = {"float32": WorldModel(replace(config, precision="float32"), EnvSpec(obs_shape, 2), CPU)}
    for precision in ("bfloat16", "auto"):
        built[precision] = WorldModel(replace(config, precision=precision), EnvSpec(obs_shape, 2), CPU)
        built[precision].load_state_dict(built["float32"].state_dict())
    return built


def losses(model: WorldModel, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    torch.manual_seed(1)  # the same posterior samples for every model
    return model.loss(batch)[3]


def test_image_nll_is_the_mean_gaussian_nll_of_images():
    mean, target = torch.randn(3, 4, 8, 8, 3), torch.randn(3, 4, 8, 8, 3)
    assert torch.allclose(image_nll(mean, target), gaussian_nll(mean, target, 3).mean())


def test_precision_choices():
    assert not uses_bfloat16("float32", CPU) and uses_bfloat16("bfloat16", CPU)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert uses_bfloat16("auto", CPU) == native


def test_bfloat16_pixel_losses_are_finite_and_close_to_float32():
    built, batch = models((64, 64, 3)), fixed_batch((64, 64, 3))
    assert built["bfloat16"].bfloat16 and not built["float32"].bfloat16
    reference = losses(built["float32"], batch)
    for precision in ("bfloat16", "auto"):
        metrics = losses(built[precision], batch)
        for key in ("model/image_loss", "model/reward_loss", "model/kl", "model/loss"):
            assert metrics[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-3), (precision, key)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_each_precision_trains_a_pixel_model(precision):
    model = models((64, 64, 3))[precision]
    batch = fixed_batch((64, 64, 3))
    first = losses(model, batch)["model/image_loss"]
    for _ in range(5):
        _, metrics = model.train_step(batch)
        assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    assert losses(model, batch)["model/image_loss"] < first
    assert next(model.encoder.parameters()).dtype == torch.float32  # the weights stay float32


def test_state_models_ignore_the_precision():
    built, batch = models((5,)), fixed_batch((5,))
    assert not built["bfloat16"].bfloat16
    assert losses(built["bfloat16"], batch) == losses(built["float32"], batch)
