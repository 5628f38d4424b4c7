"""Time-series forecasting: a GRU reads the last 96 steps of a generated series (trend, two
seasons, noise) and predicts the next 12; trained with torch.nn and with fusedrnn from the same
seed, and scored against the naive forecast "the last value stays".

    python examples/forecast_gru.py [--impl torch|fused|both] [--epochs N] [--device cuda]
"""
import math

import torch
from torch import nn

from common import compare, parse_args, tensor_batches

WINDOW, HORIZON = 96, 12


def make_series(length, seed):
    """A daily (period 24) and a weekly (period 168) season on a slow trend, with noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    trend = 0.002 * t + 0.5 * torch.sin(2 * math.pi * t / 2000)
    daily = torch.sin(2 * math.pi * t / 24) + 0.3 * torch.sin(4 * math.pi * t / 24 + 1.0)
    weekly = 0.6 * torch.sin(2 * math.pi * t / 168)
    return trend + daily + weekly + 0.2 * torch.randn(length, generator=g)


def windows(series):
    """Inputs [N, WINDOW, 1] and targets [N, HORIZON], both relative to the window's last value
    (so the model learns the shape of what comes next, not the level the trend has reached)."""
    span = series.unfold(0, WINDOW + HORIZON, 1)                # [N, WINDOW + HORIZON]
    last = span[:, WINDOW - 1:WINDOW]
    return (span[:, :WINDOW] - last).unsqueeze(-1), span[:, WINDOW:] - last


class Forecaster(nn.Module):
    def __init__(self, hidden=64, layers=2):
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=layers, batch_first=True)  # fusedrnn.convert swaps it
        self.head = nn.Linear(hidden, HORIZON)

    def forward(self, x):                # x: [B, WINDOW, 1]
        _, h_n = self.gru(x)             # h_n: [layers, B, hidden]
        return self.head(h_n[-1])        # [B, HORIZON]


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--length", type=int, default=6000, help="steps in the series")
        parser.add_argument("--batch-size", type=int, default=64)
    args = parse_args(__doc__.splitlines()[0], argv, epochs=8, lr=2e-3, add_arguments=add_arguments)
    series = make_series(args.length, args.seed)
    split = int(0.8 * len(series))           # train on the past, test on the future
    x_train, y_train = (t.to(args.device) for t in windows(series[:split]))
    x_test, y_test = (t.to(args.device) for t in windows(series[split - WINDOW:]))
    mse = nn.MSELoss()

    def batches(epoch):
        return tensor_batches(x_train, y_train, args.batch_size, args.seed + epoch)

    def loss_of(model, batch):
        x, y = batch
        return mse(model(x), y)

    def evaluate(model):
        # The naive forecast repeats the last value: 0 relative to it.
        return {"test MSE": mse(model(x_test), y_test).item(),
                "naive last-value MSE": mse(torch.zeros_like(y_test), y_test).item()}

    return compare(args, Forecaster, batches, loss_of, evaluate, clip=1.0)


if __name__ == "__main__":
    main()
