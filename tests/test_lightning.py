"""A real Lightning Trainer on a tiny model, on the CPU, with MeterCallback."""

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import meter  # noqa: E402
from meter.integrations.lightning import MeterCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)

    def training_step(self, batch, i):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

    def predict_step(self, batch, i):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    ds = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    return torch.utils.data.DataLoader(ds, batch_size=5)


def test_fit_validate_predict_spans(tmp_path):
    cb = MeterCallback(region="DE", rapl_root=str(tmp_path / "none"), gpus="none")
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), callbacks=[cb])
    model = Tiny()
    trainer.fit(model, loader(20, 0), loader(10, 1))
    logged = dict(trainer.callback_metrics)
    trainer.predict(model, loader(15, 2))
    df = meter.load(cb.meter.run_dir).set_index("path")
    assert {"fit", "fit/epoch-1", "fit/epoch-2", "fit/epoch-1/validate", "fit/epoch-2/validate", "predict"} <= set(df.index)
    assert df.loc["fit", "samples"] == 40 and df.loc["fit/epoch-2", "samples"] == 20
    assert df.loc["fit/epoch-1/validate", "samples"] == 10 and df.loc["predict", "samples"] == 15
    assert {"energy_kwh", "emissions_g", "power_w", "val_energy_kwh"} <= set(logged)
    assert float(logged["energy_kwh"]) > 0
