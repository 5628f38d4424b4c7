"""The cases of fusedrnn.bench: what each one runs, the named grids, and their FLOP counts."""
import dataclasses

import torch

FLOP_NOTE = (
    "GEMM FLOPs only, 2 per multiply-add. Forward, per layer and direction: "
    "2*T*B*G*H*(I_l+H), G = 4 (LSTM), 3 (GRU), 1 (RNN), I_l = I for the first layer and D*H "
    "after it. A training step counts 3x the forward (input-gradient and weight-gradient "
    "GEMMs for every forward GEMM). Pointwise work is not counted.")

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODES = ("inference", "training")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BASELINES = {"torch": "torch.nn", "torch_no_cudnn": "torch.nn without cuDNN",
             "onnxruntime": "ONNX Runtime"}

SEED = 0
MIN_REPS = 5
MAX_REPS = 1000
WARMUP_ROUNDS = {"cpu": 1, "cuda": 3}  # CUDA: cuDNN plans, cuBLAS workspaces, the allocator
PEAK_MATMUL_N = {"cpu": 1024, "cuda": 4096}
PEAK_MATMUL_REPS = 10
DEFAULT_BUDGET_S = {"cpu": 8.0, "cuda": 3.0}
QUICK_BUDGET_S = 0.3


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed comparison: a cell, a shape, a dtype and a mode."""
    cell: str
    T: int
    B: int
    I: int  # noqa: E741  (the letters of the shape notation, see the module docstring)
    H: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    mode: str = "inference"
    packed: bool = False  # a PackedSequence of B sequences of lengths 1 to T (see lengths())

    def label(self) -> str:
        stack = f"L{self.layers}" + (" bidir" if self.bidirectional else "")
        steps = f"T<={self.T} packed" if self.packed else f"T={self.T}"
        return (f"{self.cell} {stack} {steps} B={self.B} I={self.I} H={self.H} "
                f"{self.dtype} {self.mode}")

    def lengths(self) -> list:
        """Sequence lengths: T for a padded batch; for a packed one, mixed lengths from 1 to T
        in no particular order (the same draw every time), the longest always T."""
        if not self.packed:
            return [self.T] * self.B
        drawn = torch.randint(1, self.T + 1, (self.B,), generator=torch.Generator().manual_seed(7))
        drawn[0] = self.T
        return drawn.tolist()


def _cases(cells, *, dtypes="float32", modes="inference,training", **shape):
    """Every combination of the comma-separated cells, dtypes and modes for one shape."""
    return [Case(cell, dtype=dtype, mode=mode, **shape) for cell in cells.split(",")
            for dtype in dtypes.split(",") for mode in modes.split(",")]


# PyTorch's benchmarks/fastrnns default shape.
_FASTRNNS = _cases("lstm", T=100, B=64, I=512, H=512)
# The FlashRNN paper's H100 comparison shape.
_FLASHRNN = _cases("lstm,gru", dtypes="float16,bfloat16", T=1024, B=16, I=768, H=768)
GRIDS = {
    "quick": [
        *_cases("lstm", T=8, B=2, I=16, H=16),
        *_cases("gru,rnn_relu", modes="training", T=8, B=2, I=16, H=16, layers=2,
                bidirectional=True),
    ],
    "fastrnns": _FASTRNNS,
    "flashrnn": _FLASHRNN,
    # About 1.5 minutes on an H100 at the default budget (fused: ~2 launches per step).
    "gpu": [
        *_FASTRNNS,
        *_FLASHRNN,
        *_cases("lstm,gru", modes="inference", T=1000, B=1, I=512, H=512),  # batch 1
        *_cases("lstm,gru", T=100, B=256, I=512, H=512),  # large batch
        *_cases("lstm", T=2000, B=32, I=256, H=256),  # long sequence
        *_cases("lstm,gru", T=100, B=64, I=512, H=512, layers=2, bidirectional=True),
        *_cases("rnn_tanh,rnn_relu", T=100, B=64, I=512, H=512),
        *_cases("lstm,gru", T=100, B=64, I=512, H=512, packed=True),  # mixed lengths
    ],
    # Sized for 2 CPU cores in about 7 minutes at the default budget.
    "cpu": [
        *_FASTRNNS,
        *_cases("gru", modes="training", T=100, B=64, I=512, H=512),
        # bfloat16, on bfloat16 dot products where the CPU has AVX512-BF16 (ISA avx512_bf16), on
        # tile products where it has AMX (ISA amx).
        *_cases("lstm,gru", dtypes="bfloat16", T=100, B=64, I=512, H=512),
        *_cases("lstm,gru", T=100, B=1, I=64, H=64),
        *_cases("rnn_tanh", T=100, B=16, I=128, H=128),
        *_cases("lstm", T=50, B=16, I=128, H=128, layers=2, bidirectional=True),
        *_cases("lstm", modes="inference", T=100, B=1, I=256, H=256),
        *_cases("gru", modes="inference", T=100, B=8, I=256, H=256),
        *_cases("lstm", T=50, B=16, I=128, H=128, packed=True),  # mixed lengths
        # Forecasting and tagging libraries' batched LSTMs and GRUs (darts, neuralforecast, flair
        # defaults): small hidden sizes, moderate batches.
        *_cases("lstm,gru", T=48, B=32, I=128, H=128),
        *_cases("lstm", T=100, B=16, I=64, H=64),
        *_cases("lstm", T=100, B=64, I=32, H=32),
        # Many more input features than units: a small LSTM on word or encoder features.
        *_cases("lstm", T=50, B=32, I=1024, H=128),
        # One step per call, as a streaming or autoregressive server makes them: one stream, and
        # a batch of 16.
        *_cases("lstm,gru", modes="inference", T=1, B=1, I=64, H=64),
        *_cases("lstm,gru", modes="inference", T=1, B=16, I=512, H=512),
    ],
}


def forward_flops(case: Case) -> int:
    """GEMM FLOPs of one forward pass (see FLOP_NOTE)."""
    directions, tokens = 2 if case.bidirectional else 1, sum(case.lengths())
    total, width = 0, case.I
    for _ in range(case.layers):
        total += directions * 2 * tokens * GATES[case.cell] * case.H * (width + case.H)
        width = directions * case.H
    return total


def case_flops(case: Case) -> int:
    """GEMM FLOPs of one timed step: a forward, or 3x that for a training step."""
    return forward_flops(case) * (3 if case.mode == "training" else 1)
