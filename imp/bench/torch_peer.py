"""Our video-text contrastive train step written in PyTorch, as a user would otherwise write it.

The same model as `ImpModel` on a vision + text NCE task, parameter for parameter: tubelet
embedding (the same (t, h, w) patch order) plus factorised t/h/w position tables, a token
table plus 1D positions for text, one shared pre-LN encoder (fused qkv, `scaled_dot_product_
attention` with the text padding mask, GELU in flax's tanh form), a final LayerNorm, masked
mean pooling, L2-normalised projections and CLIP's symmetric NCE with a learned, clipped
temperature; Adam after global-norm clipping at 1.0. Written functionally over a dict of
tensors, so this module imports without torch (it is imported inside the functions).
"""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

_LOGIT_SCALE_MAX = math.log(100.0)


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclasses.dataclass(frozen=True)
class Config:
    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    embed_dim: int
    vocab_size: int
    patch: tuple[int, int, int]
    max_grid: tuple[int, int, int]
    max_text_length: int


def init_params(cfg: Config, seed: int = 0) -> dict:
    """Parameters of the vision + text parts of the model (the shapes of `ImpModel`'s)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    d, m = cfg.d_model, cfg.mlp_dim
    patch_dim = int(np.prod(cfg.patch)) * 3

    def xavier(fan_in, fan_out):  # torch's Linear layout: [out, in]
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(fan_out, fan_in, generator=gen) * 2 - 1) * limit

    def normal(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    p = {
        "tubelet_w": xavier(patch_dim, d),
        "tubelet_b": torch.zeros(d),
        **{f"pos_{i}": normal(size, d) for i, size in enumerate(cfg.max_grid)},
        "token": normal(cfg.vocab_size, d),
        "text_pos": normal(cfg.max_text_length, d),
        "ln_final_w": torch.ones(d),
        "ln_final_b": torch.zeros(d),
        "proj_vision": xavier(d, cfg.embed_dim),
        "proj_text": xavier(d, cfg.embed_dim),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(cfg.num_layers):
        p.update(
            {
                f"{i}.ln1_w": torch.ones(d),
                f"{i}.ln1_b": torch.zeros(d),
                f"{i}.qkv_w": xavier(d, 3 * d),
                f"{i}.qkv_b": torch.zeros(3 * d),
                f"{i}.out_w": xavier(d, d),
                f"{i}.out_b": torch.zeros(d),
                f"{i}.ln2_w": torch.ones(d),
                f"{i}.ln2_b": torch.zeros(d),
                f"{i}.wi_w": xavier(d, m),
                f"{i}.wi_b": torch.zeros(m),
                f"{i}.wo_w": xavier(m, d),
                f"{i}.wo_b": torch.zeros(d),
            }
        )
    return {k: v.requires_grad_() for k, v in p.items()}


def num_params(params: dict) -> int:
    return sum(v.numel() for v in params.values())


def _encode(cfg: Config, p: dict, x, mask):
    """Pre-LN encoder over `x` `[batch, length, d]`; `mask` `[batch, length]` or None."""
    import torch.nn.functional as F

    b, n, d = x.shape
    h = cfg.num_heads
    attn_mask = None if mask is None else mask[:, None, None, :]
    for i in range(cfg.num_layers):
        y = F.layer_norm(x, (d,), p[f"{i}.ln1_w"], p[f"{i}.ln1_b"], eps=1e-6)
        qkv = F.linear(y, p[f"{i}.qkv_w"], p[f"{i}.qkv_b"]).view(b, n, 3, h, d // h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [batch, heads, length, head_dim]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).reshape(b, n, d)
        x = x + F.linear(y, p[f"{i}.out_w"], p[f"{i}.out_b"])
        y = F.layer_norm(x, (d,), p[f"{i}.ln2_w"], p[f"{i}.ln2_b"], eps=1e-6)
        y = F.gelu(F.linear(y, p[f"{i}.wi_w"], p[f"{i}.wi_b"]), approximate="tanh")
        x = x + F.linear(y, p[f"{i}.wo_w"], p[f"{i}.wo_b"])
    return F.layer_norm(x, (d,), p["ln_final_w"], p["ln_final_b"], eps=1e-6)


def _embed_vision(cfg: Config, p: dict, video):
    import torch
    import torch.nn.functional as F

    b, t, hh, ww, c = video.shape
    pt, ph, pw = cfg.patch
    gt, gh, gw = t // pt, hh // ph, ww // pw
    patches = video.reshape(b, gt, pt, gh, ph, gw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    tokens = F.linear(patches.reshape(b, gt * gh * gw, -1), p["tubelet_w"], p["tubelet_b"])
    # Table rows at normalised coordinates: floor(i / n * size), as `embedders.position_buckets`.
    t_rows, h_rows, w_rows = (
        torch.arange(n) * size // n for n, size in zip((gt, gh, gw), cfg.max_grid, strict=True)
    )
    pos = p["pos_0"][t_rows, None, None] + p["pos_1"][None, h_rows, None]
    pos = pos + p["pos_2"][None, None, w_rows]
    return tokens + pos.reshape(gt * gh * gw, -1)


def _embedding(cfg: Config, p: dict, tokens, mask, projection):
    import torch.nn.functional as F

    x = _encode(cfg, p, tokens, mask)
    if mask is None:
        pooled = x.mean(1)
    else:
        w = mask[..., None].to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
    z = F.linear(pooled, p[projection])
    return z / z.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def loss_fn(cfg: Config, p: dict, video, text):
    """CLIP's symmetric NCE of one video-text batch."""
    import torch
    import torch.nn.functional as F

    mask = text != 0
    text_tokens = p["token"][text] + p["text_pos"][: text.shape[1]]
    a = _embedding(cfg, p, _embed_vision(cfg, p, video), None, "proj_vision")
    b = _embedding(cfg, p, text_tokens, mask, "proj_text")
    logits = p["logit_scale"].clamp(0.0, _LOGIT_SCALE_MAX).exp() * a @ b.T
    labels = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class Peer:
    """The PyTorch train step and its parts (forward, forward + backward, update) on one
    fixed batch, run with `threads` intra-op threads."""

    def __init__(
        self, cfg: Config, video: np.ndarray, text: np.ndarray, threads: int, device: str = "cpu"
    ):
        import torch

        torch.set_num_threads(threads)
        self.cfg, self.device = cfg, torch.device(device)
        self.params = {
            k: v.detach().to(self.device).requires_grad_() for k, v in init_params(cfg).items()
        }
        self.video = torch.from_numpy(video).to(self.device)
        self.text = torch.from_numpy(text).long().to(self.device)
        self.optimizer = torch.optim.Adam(self.params.values(), lr=1e-4)

    def _loss(self):
        with self.device:  # the step's own tensors (positions, labels) on the device too
            return loss_fn(self.cfg, self.params, self.video, self.text)

    def forward(self) -> float:
        return self._loss().item()

    def forward_backward(self) -> float:
        for v in self.params.values():
            v.grad = None
        loss = self._loss()
        loss.backward()
        return loss.item()

    def update(self) -> float:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.params.values(), 1.0)
        self.optimizer.step()
        return norm.item()

    def step(self) -> float:
        loss = self.forward_backward()
        self.update()
        return loss


def _matmul(n: int, device: str) -> Callable[[], float]:
    """One `[n, n] @ [n, n]` float32 matmul (2 n^3 FLOPs per call)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device) for _ in range(2))
    return lambda: torch.mm(a, b)[0, 0].item()


class PeerProcess:
    """The peer in a child process of its own, timed on request.

    A child because torch and TensorFlow (our input pipeline, loaded with `imp`) cannot share
    a process: torch's first optimizer imports triton, whose LLVM crashes next to TF's. The
    child imports neither JAX nor TF; its threads are the only ones busy while it is timed.
    """

    def __init__(
        self,
        cfg: Config,
        batch: dict[str, np.ndarray],
        threads: int,
        matmul: int,
        device: str = "cpu",
    ):
        self._dir = tempfile.TemporaryDirectory()
        path = os.path.join(self._dir.name, "batch.npz")
        np.savez(path, vision=batch["vision"], text=batch["text"])
        setup = {
            "config": dataclasses.asdict(cfg),
            "batch": path,
            "threads": threads,
            "device": device,
        }
        # OpenMP's threads wait for work by spinning; on a shared machine a spinning thread
        # holds a core another needs, and each of the step's hundreds of parallel regions
        # then waits a scheduler slice (measured: Adam's update 2 s instead of 20 ms).
        env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "imp.bench.torch_peer"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.num_params = self._ask({**setup, "matmul": matmul})["num_params"]

    def _ask(self, request: dict) -> dict:
        self._child.stdin.write(json.dumps(request) + "\n")
        self._child.stdin.flush()
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch peer exited (code {self._child.wait()})")
        return json.loads(line)

    def seconds(self, part: str, warmup: int = 0) -> float:
        """Seconds of one call of `part` (step, forward, forward+backward, update or matmul),
        after `warmup` untimed calls."""
        return self._ask({"part": part, "warmup": warmup})["seconds"]

    def close(self) -> None:
        self._child.stdin.close()
        self._child.wait()
        self._dir.cleanup()


def _serve() -> None:
    """The child: a setup line, then one timing request per line, each answered in JSON."""
    setup = json.loads(sys.stdin.readline())
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in setup["config"].items()})
    batch = np.load(setup["batch"])
    device = setup["device"]
    if device.startswith("cuda"):
        import torch

        # TensorFloat-32 matmuls, as XLA uses for float32 dots on the GPU by default.
        torch.set_float32_matmul_precision("high")
    peer = Peer(cfg, batch["vision"], batch["text"], setup["threads"], device)
    peer.forward_backward()  # gradients for `update` alone
    parts = {
        "step": peer.step,
        "forward": peer.forward,
        "forward+backward": peer.forward_backward,
        "update": peer.update,
        "matmul": _matmul(setup["matmul"], device),
    }
    print(json.dumps({"num_params": num_params(peer.params)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        fn = parts[request["part"]]
        for _ in range(request["warmup"]):
            fn()
        start = time.perf_counter()
        fn()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    _serve()
